"""cxr: ResNet classifiers of thoracic disease on chest X-rays, from folder to web app."""

__version__ = "0.1.0"

NOT_A_MEDICAL_DEVICE = (
    "Research software: not a medical device. Predictions must not be used for diagnosis "
    "or treatment decisions."
)

import type { ModelInfo as Info } from "../api";
import { humanName } from "../calls";

function fmt(value: number | null | undefined, digits = 3): string {
  return value === null || value === undefined ? "n/a" : value.toFixed(digits);
}

/** "0.812 (0.74–0.88)": a value with its interval, when training computed one. */
export function withInterval(value: number | null | undefined, ci: number[] | null | undefined, digits: number): string {
  if (value === null || value === undefined) return "n/a";
  return ci && ci.length === 2 ? `${fmt(value, digits)} (${fmt(ci[0], digits)}–${fmt(ci[1], digits)})` : fmt(value, digits);
}

/** What the model is, what it was trained on (never a server path), how each finding did on
 * validation (with its positives and borderline band), and what it is for. */
export function ModelInfo({ info, error }: { info: Info | null; error: string | null }) {
  if (error) {
    return (
      <section className="panel model-info" aria-labelledby="model-title">
        <h2 id="model-title">Model</h2>
        <p className="error" role="alert">
          {error}
        </p>
      </section>
    );
  }
  if (!info) return <section className="panel model-info">Loading model information…</section>;
  const val = info.metrics.validation;
  const data = info.training_data;
  const points = info.operating_points ?? {};
  const cut = info.reliable_auroc ?? 0.6;
  const ci = val?.intervals;
  const caption = ci
    ? `Validation metrics per finding (at the threshold), with ${Math.round(ci.level * 100)}% intervals from ${
        ci.n_boot ?? "?"
      } ${ci.method} resamples in brackets`
    : "Validation metrics per finding (at the threshold); confidence intervals: not computed for this run (trained before they were)";
  return (
    <section className="panel model-info" aria-labelledby="model-title">
      <details>
        <summary>
          <h2 id="model-title">
            Model: {info.arch}, {info.findings.length} {info.task === "multilabel" ? "findings" : "classes"},{" "}
            {info.image_size} px
          </h2>
        </summary>
        <dl>
          <dt>Name and version</dt>
          <dd>
            {info.name}
            {info.version ? `, cxr ${info.version}` : ""}
          </dd>
          <dt>Trained on</dt>
          <dd>
            {data.n_train ?? "?"} images ({data.n_val ?? "?"} for validation) from {data.source ?? "an unnamed source"}
          </dd>
          <dt>Validation</dt>
          <dd>
            {val
              ? `mean AUROC ${fmt(val.mean_auroc)}, accuracy ${fmt(val.accuracy)} on ${val.n_images} images`
              : "no validation metrics in this run"}
          </dd>
          <dt>Thresholds</dt>
          <dd>
            {info.threshold_method ?? "chosen on the validation split"}; scores between the band's ends are called
            “possible”. Findings with validation AUROC ≤ {cut} (or not estimable) are marked unreliable.
          </dd>
          <dt>Intended use</dt>
          <dd>{info.model_card.intended_use}</dd>
          <dt>Not for</dt>
          <dd>{info.model_card.not_for}</dd>
          <dt>Limitations</dt>
          <dd>{info.model_card.limitations}</dd>
          <dt>Input checks</dt>
          <dd>{info.ood_gate?.enabled ? "on: images unlike the training X-rays are refused or flagged" : "off for this model"}</dd>
        </dl>
        <p className="hint" data-testid="metrics-caption">
          {caption}
        </p>
        <div className="table-scroll" tabIndex={0} role="region" aria-label="Validation metrics per finding">
          <table className="metrics">
            <caption className="sr-only">Validation metrics per finding</caption>
            <thead>
              <tr>
                <th scope="col">finding</th>
                <th scope="col">positives of images</th>
                <th scope="col">AUROC</th>
                <th scope="col">sens.</th>
                <th scope="col">spec.</th>
                <th scope="col">threshold</th>
                <th scope="col">borderline band</th>
              </tr>
            </thead>
            <tbody>
              {info.findings.map((f) => {
                const m = val?.per_finding[f];
                const b = points[f];
                return (
                  <tr key={f} className={b && !b.reliable ? "unreliable" : undefined}>
                    <th scope="row">
                      {humanName(f)}
                      {b && !b.reliable ? " (unreliable)" : ""}
                    </th>
                    <td>
                      {m?.n_positive ?? "n/a"}
                      {m?.n_positive != null && m?.n_negative != null ? ` of ${m.n_positive + m.n_negative}` : ""}
                    </td>
                    <td>{withInterval(m?.auroc, m?.auroc_ci, 3)}</td>
                    <td>{withInterval(m?.sensitivity, m?.sensitivity_ci, 2)}</td>
                    <td>{withInterval(m?.specificity, m?.specificity_ci, 2)}</td>
                    <td>{fmt(info.thresholds[f], 3)}</td>
                    <td>{b && b.high > b.low ? `${fmt(b.low, 3)}–${fmt(b.high, 3)}` : "none"}</td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        </div>
      </details>
    </section>
  );
}

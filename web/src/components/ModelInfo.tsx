import type { ModelInfo as Info } from "../api";

function fmt(value: number | null | undefined, digits = 3): string {
  return value === null || value === undefined ? "n/a" : value.toFixed(digits);
}

/** What the model is, what it was trained on, how it did on validation, what it is for. */
export function ModelInfo({ info, error }: { info: Info | null; error: string | null }) {
  if (error) {
    return (
      <section className="panel model-info">
        <h2>Model</h2>
        <p className="error" role="alert">
          {error}
        </p>
      </section>
    );
  }
  if (!info) return <section className="panel model-info">Loading model information…</section>;
  const val = info.metrics.validation;
  const data = info.training_data;
  return (
    <section className="panel model-info" aria-label="Model information">
      <details open>
        <summary>
          <h2>
            Model: {info.arch}, {info.findings.length}{" "}
            {info.task === "multilabel" ? "findings" : "classes"}, {info.image_size} px
          </h2>
        </summary>
        <dl>
          <dt>Trained on</dt>
          <dd>
            {data.n_train ?? "?"} images ({data.n_val ?? "?"} for validation) from{" "}
            <code>{data.source ?? data.path ?? "unknown"}</code>
          </dd>
          <dt>Validation</dt>
          <dd>
            {val
              ? `mean AUROC ${fmt(val.mean_auroc)}, accuracy ${fmt(val.accuracy)} on ${val.n_images} images`
              : "no validation metrics in this run"}
          </dd>
          <dt>Intended use</dt>
          <dd>{info.model_card.intended_use}</dd>
          <dt>Not for</dt>
          <dd>{info.model_card.not_for}</dd>
          <dt>Limitations</dt>
          <dd>{info.model_card.limitations}</dd>
          <dt>Out-of-distribution check</dt>
          <dd>{info.ood_gate?.enabled ? "on" : `off: ${info.ood_gate?.note ?? "none"}`}</dd>
        </dl>
        {val && (
          <div className="table-scroll">
          <table className="metrics">
            <caption>Validation metrics per finding (at the threshold)</caption>
            <thead>
              <tr>
                <th>finding</th>
                <th>AUROC</th>
                <th>sens.</th>
                <th>spec.</th>
                <th>threshold</th>
              </tr>
            </thead>
            <tbody>
              {info.findings.map((f) => (
                <tr key={f}>
                  <td>{f}</td>
                  <td>{fmt(val.per_finding[f]?.auroc)}</td>
                  <td>{fmt(val.per_finding[f]?.sensitivity, 2)}</td>
                  <td>{fmt(val.per_finding[f]?.specificity, 2)}</td>
                  <td>{fmt(info.thresholds[f], 2)}</td>
                </tr>
              ))}
            </tbody>
          </table>
          </div>
        )}
      </details>
    </section>
  );
}

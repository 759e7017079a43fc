import { useRef } from "react";

interface Props {
  onFiles: (files: File[]) => void;
  busy: boolean;
  over: boolean;
}

/** Pick one or many files (dropping works anywhere on the page: see App). */
export function DropZone({ onFiles, busy, over }: Props) {
  const input = useRef<HTMLInputElement>(null);
  return (
    <div className={`drop${over ? " over" : ""}`}>
      <p className="drop-title">Drop chest X-rays anywhere on this page</p>
      <p className="drop-hint">PNG, JPEG or DICOM; one or several at a time</p>
      <button type="button" className="primary" onClick={() => input.current?.click()}>
        {busy ? "Add more files…" : "Choose files…"}
      </button>
      <input
        ref={input}
        id="file-input"
        data-testid="file-input"
        type="file"
        multiple
        hidden
        onChange={(e) => {
          const files = e.target.files ? Array.from(e.target.files) : [];
          if (files.length) onFiles(files);
          e.target.value = ""; // the same file can be chosen again
        }}
      />
    </div>
  );
}

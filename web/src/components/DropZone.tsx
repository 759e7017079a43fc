import { useRef, useState } from "react";

interface Props {
  onFiles: (files: File[]) => void;
  busy: boolean;
}

/** Drag and drop, or pick, one or many files; the server decides what it can read. */
export function DropZone({ onFiles, busy }: Props) {
  const input = useRef<HTMLInputElement>(null);
  const [over, setOver] = useState(false);
  const take = (list: FileList | null) => {
    const files = list ? Array.from(list) : [];
    if (files.length) onFiles(files);
  };
  return (
    <div
      className={`drop${over ? " over" : ""}`}
      onDragOver={(e) => {
        e.preventDefault();
        setOver(true);
      }}
      onDragLeave={() => setOver(false)}
      onDrop={(e) => {
        e.preventDefault();
        setOver(false);
        take(e.dataTransfer.files);
      }}
    >
      <p className="drop-title">Drop chest X-rays here</p>
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
          take(e.target.files);
          e.target.value = ""; // the same file can be chosen again
        }}
      />
    </div>
  );
}

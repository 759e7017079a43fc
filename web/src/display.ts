// The image the viewer windows. A predict answer carries only a small JPEG preview inline; the
// lossless display image (16-bit for DICOM and 16-bit PNG) is fetched from the URL the answer
// gives (GET /api/display/<id>, held in the server's memory for a few minutes). When that is
// gone (a result from the history, a server restart), the viewer windows the 8-bit preview and
// says so.
import type { Prediction } from "./api";
import { dataUrlBytes, decodeGreyPng, type GreyImage } from "./windowing";

type Fetch = typeof fetch;
type ImageInfo = Prediction["image"];

export interface LoadedGrey {
  grey: GreyImage | null;
  source: "display" | "preview" | "none";
  note?: string; // why the viewer is not at the file's full depth
}

// The last few display images, so going back and forth between results does not refetch them.
const MEMO_SIZE = 4;
const memo = new Map<string, GreyImage>();

function remember(url: string, grey: GreyImage) {
  memo.delete(url);
  memo.set(url, grey);
  while (memo.size > MEMO_SIZE) memo.delete(memo.keys().next().value as string);
}

export async function fetchDisplay(url: string, fetchFn: Fetch = fetch): Promise<GreyImage> {
  const response = await fetchFn(url);
  if (!response.ok) throw new Error(`display image: HTTP ${response.status}`);
  return decodeGreyPng(new Uint8Array(await response.arrayBuffer()));
}

/** Grey values of an image data URL the PNG decoder cannot read (the JPEG preview): a canvas. */
export async function greyFromImage(url: string): Promise<GreyImage> {
  const img = new Image();
  img.src = url;
  await img.decode();
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const ctx = canvas.getContext("2d");
  if (!ctx || !canvas.width) throw new Error("no canvas to decode the preview");
  ctx.drawImage(img, 0, 0);
  const rgba = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  const data = new Uint8Array(canvas.width * canvas.height);
  for (let i = 0; i < data.length; i++) data[i] = rgba[i * 4];
  return { width: canvas.width, height: canvas.height, data, maxValue: 255 };
}

export async function loadGrey(image: ImageInfo, fetchFn: Fetch = fetch): Promise<LoadedGrey> {
  let note: string | undefined;
  const display = image.display;
  if (display) {
    const known = memo.get(display.url);
    if (known) return { grey: known, source: "display" };
    try {
      const grey = await fetchDisplay(display.url, fetchFn);
      remember(display.url, grey);
      return { grey, source: "display" };
    } catch {
      const minutes = Math.max(1, Math.round(display.expires_s / 60));
      note =
        `The full-depth image is no longer on the server (it keeps it ${minutes} min, in memory only): ` +
        "window/level works on the 8-bit preview. Analyse the file again for full depth.";
    }
  }
  const original = image.original;
  if (!original) return { grey: null, source: "none", note };
  try {
    // results saved before the display image was fetched separately carry a PNG inline
    if (original.startsWith("data:image/png")) return { grey: decodeGreyPng(dataUrlBytes(original)), source: "preview", note };
    return { grey: await greyFromImage(original), source: "preview", note };
  } catch {
    return { grey: null, source: "none", note };
  }
}

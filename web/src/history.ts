// The results list kept in this browser's IndexedDB (never sent anywhere), so a reload keeps
// it; "Forget all" empties it. Each entry keeps the file itself, for retries and heatmaps.
import { createStore, del, entries, set, clear } from "idb-keyval";
import type { Prediction } from "./api";

export interface StoredItem {
  id: number;
  name: string;
  blob: Blob;
  added: number; // ms since epoch
  result?: Prediction;
  error?: string;
  errorDetail?: string;
}

let store: ReturnType<typeof createStore> | null = null;
function db() {
  store ??= createStore("cxr-web", "history");
  return store;
}

export function available(): boolean {
  return typeof indexedDB !== "undefined";
}

export async function loadHistory(): Promise<StoredItem[]> {
  if (!available()) return [];
  const all = await entries<number, StoredItem>(db());
  return all.map(([, v]) => v).sort((a, b) => a.id - b.id);
}

export function saveItem(item: StoredItem): Promise<void> {
  return available() ? set(item.id, item, db()) : Promise.resolve();
}

export function forgetItem(id: number): Promise<void> {
  return available() ? del(id, db()) : Promise.resolve();
}

export function forgetAll(): Promise<void> {
  return available() ? clear(db()) : Promise.resolve();
}

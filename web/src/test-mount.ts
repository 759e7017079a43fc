// For component tests: a fresh container and React root for each test of the calling file,
// unmounted and removed after it.
import { act } from "react";
import { createRoot, type Root } from "react-dom/client";
import { afterEach, beforeEach } from "vitest";

export interface MountPoint {
  container: HTMLDivElement;
  root: Root;
}

export function useMountPoint(): MountPoint {
  const mount = {} as MountPoint;
  beforeEach(() => {
    mount.container = document.createElement("div");
    document.body.appendChild(mount.container);
    mount.root = createRoot(mount.container);
  });
  afterEach(() => {
    act(() => mount.root.unmount());
    mount.container.remove();
  });
  return mount;
}

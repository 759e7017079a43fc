/// <reference types="vitest/config" />
// No React plugin: esbuild's automatic JSX runtime is all this app needs, which keeps the
// dependencies to vite + vitest (and lets vite 7 install with npm 10 as well as 11).
import { defineConfig } from "vite";

export default defineConfig({
  esbuild: { jsx: "automatic" },
  build: { outDir: "dist", sourcemap: false, target: "es2020" },
  server: {
    // `npm run dev` next to `cxr serve --port 8000`: the API stays same-origin for the app.
    proxy: { "/api": "http://127.0.0.1:8000" },
  },
  test: {
    environment: "jsdom",
    include: ["src/**/*.test.{ts,tsx}"],
    setupFiles: ["src/test-setup.ts"],
  },
});

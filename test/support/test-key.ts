// The OpenRouter key test/support/fake-openrouter.ts accepts (test/support/sidecar.ts re-exports
// it): its own module for a file that only starts sidecar processes, without loading sidecar.ts,
// which imports the sidecar's whole module graph (about 0.3 s of CPU) for an in-process one.
export const TEST_KEY = 'sk-or-v1-test-key-0123456789'

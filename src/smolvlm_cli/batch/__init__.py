"""`smolvlm batch`: caption many images, resumably. One job per module, engine-independent
except `local`:

- `discover`: which images (folders, files, stdin lists, globs), in a deterministic order;
- `templates`: per-image prompts (`{filename}`, `{stem}`, `{parent}`) and caption decoration;
- `records`: `ImageRecord` (one result per image) and `Job` (an image and its prompt);
- `files`: crash-safe primitives (atomic writes, append-only logs, torn-tail repair);
- `resume`: what a re-run still has to do; the `.smolvlm-batch.jsonl` ledger of sidecar runs;
- `writers`: txt sidecars, JSONL, CSV;
- `local`: the in-process engine (threaded preprocessing, batched inference);
- `progress`: progress bar, failures and summary on stderr;
- `runner`: a whole run, for any engine (signals, exit codes).
"""

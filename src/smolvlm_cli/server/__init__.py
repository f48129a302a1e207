"""`smolvlm serve`: an OpenAI-compatible HTTP server (the `server` extra: starlette + uvicorn).

- `settings.py`: every limit and default of the server, in one dataclass (no heavy imports);
- `schema.py`: a chat-completions request body -> a checked `ChatRequest`, or an `ApiError`
  in OpenAI's error shape;
- `images.py`: `image_url` (and `video_url`) parts -> PIL images (and video files): data URIs,
  remote URLs and local files only when allowed, with the byte, count and pixel limits;
- `scheduler.py`: the model's one worker thread, continuous batching over a request queue;
- `app.py`: the Starlette routes (chat completions, streamed or not; models; health; stats);
- `middleware.py`: the request log and the innermost handler of unexpected errors (500).
"""

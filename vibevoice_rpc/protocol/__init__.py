"""The wire: line framing over stdio, JSON-RPC 2.0, routing and the job queue, the server's lifecycle.
Knows nothing of speech or torch: the engine it serves is handed in."""

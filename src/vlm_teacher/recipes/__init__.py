"""Training recipes of the embedded models (one module per model, one command each:
``vlm-teacher train reasoner`` / ``vlm-teacher train teacher``)."""

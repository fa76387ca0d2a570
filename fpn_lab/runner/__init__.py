"""Running notebooks: the in-notebook run context and the headless papermill runner."""

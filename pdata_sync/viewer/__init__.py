"""What a person sees: the OHIF viewer bundle and its local server, the study manifest
built from headers, and the renderer of thumbnails and previews."""

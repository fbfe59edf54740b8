"""Video: decode and sample frames, link faces into tracks, draw the annotated copy (pure numpy/OpenCV)."""

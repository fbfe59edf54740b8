"""Pure numpy/OpenCV face math: SCRFD decoding, boxes, face choice, alignment, photo quality."""

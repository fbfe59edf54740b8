"""Images in and out: decoding uploads within limits, drawing results, encoding JPEG/PNG."""

"""Convert a PyTorch ArcFace backbone to ONNX for the Triton repository.

Not implemented yet: this is issue 3's work (iresnet18/34/50/100 and mobilefacenet
backbones, checkpoint loading, ONNX export with a dynamic batch and a numerical check
against PyTorch). Until then, use `extract_insightface_models.py`.
"""

from __future__ import annotations

import sys


def main() -> int:
    print("convert_to_onnx.py is not implemented yet (planned in issue 3); "
          "use extract_insightface_models.py to install the InsightFace models.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

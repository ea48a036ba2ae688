"""python -m export.serve MODEL.onnx ...: see export/serve/app.py."""
from export.serve.app import main

main()

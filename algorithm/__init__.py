"""The submission container's code: read stacks, preprocess, run the ONNX model, decode, write JSON.

Only numpy, SimpleITK, evalutils and ONNX Runtime are used here, so the container stays
small and the training code can import the very same preprocessing and decoding.
"""

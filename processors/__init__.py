"""x2ctclip.processors: everything that turns files into tensors (CT volumes, CXR images, DICOM, CT-to-CXR
simulation, tokenizer) and the combined ``X2CTCLIPProcessor``. Processors never import the model."""

"""What is made of trained networks: embeddings, ONNX files, pictures and study grids."""

"""Shape-agnostic networks: MLP / conv / ResNet encoders and decoders, PixelCNN."""

"""What the model's parts and generic code agree on: the decoder interface and its declaration
(decoder_api), the encoder's output (features), the checks of prompts in the model frame."""

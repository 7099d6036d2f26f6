"""GigaTok: a PyTorch re-implementation of the GigaTok hybrid VQ image tokenizer and its class-conditional GPTs.

Shape letters used in every module:
- B batch
- C channels; H, W height and width of an image or feature map; S image side (square images, H = W = S)
- f CNN downsampling factor; G latent grid side (G*G 2D tokens)
- L latent tokens = codes per image (1D tokenizer: num_latent_tokens; 2D: G*G)
- K codebook size (= GPT vocabulary); Dc code dim (codebook_embed_dim); Cz z_channels
- D width; Dh head dim; nh query heads; nkv key/value heads; F feed-forward hidden width
- T sequence positions (the GPT: class token + codes; attention: query positions); Tk key/value positions; Tmax cache
  length
- A augmented views per image; R decoding rows (2B with classifier-free guidance, else B)
- N a flattened count, stated where used (e.g. "N = B*H*W vectors", "N images")
- P patch tokens of a ViT; Dt teacher width
"""

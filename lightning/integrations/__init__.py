"""Drop-in replacements for code written against other libraries.

    lightning.integrations.fla           FLA's chunk_lightning_attn, chunk_simple_gla and
                                         fused_recurrent_simple_gla (and their lightning twin)
                                         with the same signatures, on lightning.attn
    lightning.integrations.transformers  patch_minimax / unpatch_minimax: Hugging Face
                                         MiniMaxLightningAttention layers on lightning.attn and
                                         lightning.attn_decode (needs transformers, an optional
                                         dependency: pip install lightning-im2win-kernels[integrations])

Each submodule is imported on its own: importing this package imports neither FLA nor
transformers.
"""

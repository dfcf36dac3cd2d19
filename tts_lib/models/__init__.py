"""Model families tts_lib can fine-tune. Each family is a subpackage with the same small surface:
load a checkpoint folder, turn audio into training targets (codes), build training sequences and
their loss components, generate, and save in the family's own upstream layout."""

"""The slice map's lifecycle: built from a checkpoint (W then t-SNE), published as immutable versions,
updated with new studies (placement), and published at the training's milestones (``lifecycle``).
"""

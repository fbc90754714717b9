"""Which slices to label next: one module per strategy, and the incremental index a server keeps.

In the 2-D map: farthest point sampling (:mod:`.fps`, the paper's), random (:mod:`.random_pick`) and the
server's incremental FPS (:mod:`.incremental`). In the whole embedding: TypiClust, ProbCover and FPS in the
features (:mod:`.typiclust`, :mod:`.probcover`, :mod:`.fps_features`, on :mod:`.features`).
"""

"""Privacy audit, Flower-free: what an attacker sees, gradient and model inversion, scores.

The views (:mod:`task.audit.views`) compute exactly what a server receives from a site in
each setting; the attacks (:mod:`task.audit.inversion`, :mod:`task.audit.model_inversion`)
try to recover images from it; :mod:`task.audit.scores` compares each reconstruction with
the true images using MONAI's SSIM and PSNR and the MSE.
"""

"""fastai glue: the mmdet callback, the COCO metric, training guards and the learner factory."""

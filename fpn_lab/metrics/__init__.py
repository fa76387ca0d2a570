"""COCO box metrics over fpn_lab records (pycocotools)."""

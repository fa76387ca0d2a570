# EfficientDet-D0 (Tan, Pang and Le, CVPR 2020, arXiv:1911.09070) for fpn_lab: mmdet 3.3's EfficientNet-B0
# backbone, fpn_lab's BiFPN neck (fpn_lab.BiFPN) and EfficientDet head (fpn_lab.EfficientDetHead).
# Section and table numbers below are the paper's. mmdet's wheel ships no EfficientDet config; its source tree's
# projects/EfficientDet trains the same design with TF-style "same" padding (a registered conv of its own,
# not used here) and soft-NMS (mmcv's soft_nms needs its compiled extension: plain NMS at IoU 0.5 here).
_base_ = [
    "mmdet::_base_/datasets/coco_detection.py",
    "mmdet::_base_/schedules/schedule_1x.py",
    "mmdet::_base_/default_runtime.py",
]
image_size = 512  # D0's input resolution (Table 1)
norm_cfg = dict(type="BN", requires_grad=True, eps=1e-3, momentum=0.01)  # section 4.1 (reference implementation)
model = dict(
    type="RetinaNet",  # a single-stage detector: backbone, neck, dense head
    data_preprocessor=dict(type="DetDataPreprocessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                           bgr_to_rgb=True, pad_size_divisor=32),
    backbone=dict(
        type="EfficientNet", arch="b0", drop_path_rate=0.2, out_indices=(3, 4, 5), frozen_stages=0,
        norm_cfg=norm_cfg, norm_eval=False,
        init_cfg=dict(type="Pretrained", prefix="backbone",
                      checkpoint="https://download.openmmlab.com/mmclassification/v0/efficientnet/"
                                 "efficientnet-b0_3rdparty_8xb32-aa-advprop_in1k_20220119-26434485.pth")),
    # BiFPN of width 64 and depth 3 (Table 1, D0) on C3-C5, P6 and P7 by pooling (section 3.3)
    neck=dict(type="fpn_lab.BiFPN", in_channels=[40, 112, 320], out_channels=64, start_level=0, num_outs=5,
              num_repeats=3, fusion="fast"),
    bbox_head=dict(
        type="fpn_lab.EfficientDetHead", num_classes=80, in_channels=64, feat_channels=64, stacked_convs=3,
        num_levels=5,
        # 9 anchors per position, 3 scales x 3 ratios, size 4 x stride (section 4.1)
        anchor_generator=dict(type="AnchorGenerator", octave_base_scale=4, scales_per_octave=3, ratios=[1.0, 0.5, 2.0],
                              strides=[8, 16, 32, 64, 128], center_offset=0.5),
        bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0, 0.0, 0.0, 0.0], target_stds=[1.0, 1.0, 1.0, 1.0]),
        loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=1.5, alpha=0.25, loss_weight=1.0),  # section 4.1
        # the reference implementation's Huber loss (delta 0.1, weight 50) is smooth L1 with beta 0.1 times 0.1
        loss_bbox=dict(type="SmoothL1Loss", beta=0.1, loss_weight=5.0)),
    train_cfg=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0,
                                 ignore_iof_thr=-1),
                   sampler=dict(type="PseudoSampler"), allowed_border=-1, pos_weight=-1, debug=False),
    test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5),
                  max_per_img=100))
test_pipeline = [
    dict(type="LoadImageFromFile", backend_args=None),
    dict(type="Resize", scale=(image_size, image_size), keep_ratio=True),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
# SGD, momentum 0.9, weight decay 4e-5, lr 0.16 at batch 128, 300 epochs, EMA 0.9998 (section 4.1)
optim_wrapper = dict(optimizer=dict(type="SGD", lr=0.16, momentum=0.9, weight_decay=4e-5),
                     paramwise_cfg=dict(norm_decay_mult=0, bias_decay_mult=0, bypass_duplicate=True),
                     clip_grad=dict(max_norm=10, norm_type=2))
max_epochs = 300
param_scheduler = [
    dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=917),
    dict(type="CosineAnnealingLR", eta_min=0.0, begin=1, T_max=299, end=300, by_epoch=True,
         convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=1)
custom_hooks = [dict(type="EMAHook", ema_type="ExpMomentumEMA", momentum=0.0002, update_buffers=True, priority=49)]
auto_scale_lr = dict(base_batch_size=128)

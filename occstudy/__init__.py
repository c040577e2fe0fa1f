"""occstudy: occlusion-robust facial expression recognition studies.

The method (Wang et al., ACCV 2022): a ResNet-34 pretrained on unlabelled faces with a
self-supervised pretext task (similarity between a face and its occluded copy, plus per-pixel
prediction of the occluder's mask), then fine-tuned on labelled clean + occluded faces.
"""

__version__ = "0.1.0"

"""The paper's ablation on a GPU node: every trial data-parallel over 2 GPUs.

The same grid as ``paper_ablation`` (4 variants x 3 seeds, LFW pretext, FER2013 fine-tune,
PrivateTest under every protocol and Occlusion-FERPlus), with the paper's recipe at 112 px.
Each trial runs as a Ray Train ``TorchTrainer`` with 2 workers (DDP over NCCL), one GPU each,
bf16 autocast and channels_last (what occstudy uses on CUDA), so a node with 8 GPUs runs 4
trials at once. ``occstudy run`` stops with a message naming the request when the cluster has
no GPU. Other sizes: ``--gpus-per-trial N`` (one worker per GPU) or ``--workers M``.
"""

from occstudy.study import FinetuneSpec, PretextSpec, Resources, Study, TestSpec, data_root

study = Study(
    name="paper_ablation_gpu",
    description="ablation on GPUs: 4 variants x 3 seeds, 2-GPU DDP trials, 112 px",
    image_size=112,
    pretext=PretextSpec(data=data_root("lfw"), epochs=10),
    finetune=FinetuneSpec(data=f"fer2013:{data_root('fer2013')}", epochs=10),
    test=TestSpec(real=(f"occlusion-ferplus:{data_root()}",)),
    seeds=(0, 1, 2),
    resources=Resources(workers=2, gpus_per_worker=1),
)

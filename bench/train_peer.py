"""The PyTorch peers of `make bench-train`, timed per epoch on the same images as the Rust
trainer. Prints one JSON line: {"setup": S, "workers": W, "epoch_seconds": [...], "images": N,
"bf16": B}.

--setup seed    the seed project's stack as its README describes it: torchvision ImageFolder with
                the seed's train_transformer (decode, resize and crop every image every epoch),
                DataLoader, MobileNetV2 in NCHW fp32, Adam, cross-entropy with label smoothing.
--setup strong  what an expert would write for a CPU: every image decoded, resized and
                centre-cropped once into a uint8 tensor; per epoch only the seed's augmentations
                run (torchvision.transforms.v2 on tensors, in the DataLoader's workers); model and
                batches in channels-last; bf16 autocast when --bf16 is given (only CPUs that
                compute bf16 natively: elsewhere it is several times slower than fp32).
"""

import argparse
import json
import time

import torch
import torchvision
from torchvision import transforms
from torchvision.transforms import v2

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def seed_augmentations(t):
    """The seed's RandomChoice, from the module `t` (transforms or transforms.v2)."""
    return t.RandomChoice([
        t.RandomHorizontalFlip(p=0.5),
        t.ColorJitter(contrast=0.9),
        t.ColorJitter(brightness=0.1),
        t.RandomApply([t.RandomHorizontalFlip(p=1), t.ColorJitter(contrast=0.9)], p=0.5),
        t.RandomApply([t.RandomHorizontalFlip(p=1), t.ColorJitter(brightness=0.1)], p=0.5),
    ])


def seed_dataset(root, size):
    # The seed's train_transformer, verbatim.
    train_transformer = transforms.Compose([
        transforms.Resize(size),
        transforms.CenterCrop(size),
        seed_augmentations(transforms),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])
    return torchvision.datasets.ImageFolder(root, transform=train_transformer)


class Decoded(torch.utils.data.Dataset):
    """Images decoded, resized and cropped once; only the augmentations run per epoch."""

    def __init__(self, root, size):
        folder = torchvision.datasets.ImageFolder(root)
        once = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()])
        self.images = torch.stack([once(folder.loader(path)) for path, _ in folder.samples])
        self.labels = torch.tensor([label for _, label in folder.samples])
        self.augment = seed_augmentations(v2)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.augment(self.images[i]), self.labels[i]


def model(device, channels_last):
    net = torchvision.models.mobilenet_v2(weights=None)
    net.classifier = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(net.last_channel, 4))
    net.to(device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    return net


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="ImageFolder root (class folders inside)")
    ap.add_argument("--setup", choices=["seed", "strong"], default="seed")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (strong setup only)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    strong = args.setup == "strong"
    bf16 = strong and args.bf16
    data = Decoded(args.data, args.image_size) if strong else seed_dataset(args.data, args.image_size)
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )
    net = model(device, channels_last=strong)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255

    epoch_seconds = []
    for _ in range(args.epochs):
        net.train()
        t0 = time.perf_counter()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if strong:
                x = ((x.float() - mean) / std).contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = criterion(net(x), y)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        epoch_seconds.append(time.perf_counter() - t0)
    print(json.dumps({
        "setup": args.setup,
        "workers": args.workers,
        "epoch_seconds": epoch_seconds,
        "images": len(data),
        "bf16": bf16,
    }))


if __name__ == "__main__":
    main()

"""The PyTorch peer of `make bench-train`: the seed project's training stack, as its README
describes it (torchvision ImageFolder + the seed's train_transformer + DataLoader, MobileNetV2,
Adam, cross-entropy with label smoothing 0.1), timed per epoch on the same images as the Rust
trainer. Prints one JSON line: {"workers": W, "epoch_seconds": [...], "images": N}.
"""

import argparse
import json
import time

import torch
import torchvision
from torchvision import transforms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True, help="ImageFolder root (class folders inside)")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = args.image_size
    # The seed's train_transformer, verbatim.
    train_transformer = transforms.Compose([
        transforms.Resize(size),
        transforms.CenterCrop(size),
        transforms.RandomChoice([
            transforms.RandomHorizontalFlip(p=0.5),
            transforms.ColorJitter(contrast=0.9),
            transforms.ColorJitter(brightness=0.1),
            transforms.RandomApply([transforms.RandomHorizontalFlip(p=1), transforms.ColorJitter(contrast=0.9)], p=0.5),
            transforms.RandomApply([transforms.RandomHorizontalFlip(p=1), transforms.ColorJitter(brightness=0.1)], p=0.5),
        ]),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    data = torchvision.datasets.ImageFolder(args.data, transform=train_transformer)
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )
    device = torch.device(args.device)
    model = torchvision.models.mobilenet_v2(weights=None)
    model.classifier = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(model.last_channel, 4))
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

    epoch_seconds = []
    for _ in range(args.epochs):
        model.train()
        t0 = time.perf_counter()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        epoch_seconds.append(time.perf_counter() - t0)
    print(json.dumps({"workers": args.workers, "epoch_seconds": epoch_seconds, "images": len(data)}))


if __name__ == "__main__":
    main()

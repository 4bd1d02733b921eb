"""The README example: freeze a CNN's backbone, train the head, prove the frozen part did not move."""

import torch
import torch.nn.functional as F

import frostline
from frostline.models import small_cnn

torch.manual_seed(0)
model = small_cnn()
frostline.freeze(model, "features")  # BatchNorm and Dropout inside stay in eval, even after model.train()
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
before = {k: v.clone() for k, v in model.features.state_dict().items()}

model.train()
x, y = torch.randn(32, 3, 16, 16), torch.randint(0, 10, (32,))
for step in range(5):
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"step {step}  loss {loss.item():.4f}")

print(frostline.summary(model, optimizer))
same = all(torch.equal(before[k], v) for k, v in model.features.state_dict().items())
print(f"frozen parameters and BatchNorm buffers bit-identical: {same}")

"""FID Inception-v3 against pytorch-fid's network, restated in plain torch.nn (torchvision has
no CPU wheel here) with its exact state-dict keys and forward; random weights and batch-norm
statistics, saved as a .pth and converted by convert/inception.py."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from wegen_jax.convert.checkpoint_io import CheckpointError  # noqa: E402
from wegen_jax.convert.inception import load_fid_inception  # noqa: E402
from wegen_jax.models.inception import pytorch_fid_input  # noqa: E402


class Basic(nn.Module):
  def __init__(self, cin, cout, **kw):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
    self.bn = nn.BatchNorm2d(cout, eps=0.001)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


def _avg(x):  # the FID blocks' pool
  return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class A(nn.Module):
  def __init__(self, cin, pool):
    super().__init__()
    self.branch1x1 = Basic(cin, 64, kernel_size=1)
    self.branch5x5_1, self.branch5x5_2 = Basic(cin, 48, kernel_size=1), Basic(48, 64, kernel_size=5, padding=2)
    self.branch3x3dbl_1 = Basic(cin, 64, kernel_size=1)
    self.branch3x3dbl_2 = Basic(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = Basic(96, 96, kernel_size=3, padding=1)
    self.branch_pool = Basic(cin, pool, kernel_size=1)

  def forward(self, x):
    d = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)), d, self.branch_pool(_avg(x))], 1)


class B(nn.Module):
  def __init__(self, cin):
    super().__init__()
    self.branch3x3 = Basic(cin, 384, kernel_size=3, stride=2)
    self.branch3x3dbl_1 = Basic(cin, 64, kernel_size=1)
    self.branch3x3dbl_2 = Basic(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = Basic(96, 96, kernel_size=3, stride=2)

  def forward(self, x):
    d = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return torch.cat([self.branch3x3(x), d, F.max_pool2d(x, 3, stride=2)], 1)


class C(nn.Module):
  def __init__(self, cin, c7):
    super().__init__()
    r, c = dict(kernel_size=(1, 7), padding=(0, 3)), dict(kernel_size=(7, 1), padding=(3, 0))
    self.branch1x1 = Basic(cin, 192, kernel_size=1)
    self.branch7x7_1, self.branch7x7_2, self.branch7x7_3 = (
      Basic(cin, c7, kernel_size=1),
      Basic(c7, c7, **r),
      Basic(c7, 192, **c),
    )
    self.branch7x7dbl_1 = Basic(cin, c7, kernel_size=1)
    self.branch7x7dbl_2, self.branch7x7dbl_3 = Basic(c7, c7, **c), Basic(c7, c7, **r)
    self.branch7x7dbl_4, self.branch7x7dbl_5 = Basic(c7, c7, **c), Basic(c7, 192, **r)
    self.branch_pool = Basic(cin, 192, kernel_size=1)

  def forward(self, x):
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    d = x
    for k in range(1, 6):
      d = getattr(self, f"branch7x7dbl_{k}")(d)
    return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg(x))], 1)


class D(nn.Module):
  def __init__(self, cin):
    super().__init__()
    self.branch3x3_1, self.branch3x3_2 = Basic(cin, 192, kernel_size=1), Basic(192, 320, kernel_size=3, stride=2)
    self.branch7x7x3_1 = Basic(cin, 192, kernel_size=1)
    self.branch7x7x3_2 = Basic(192, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7x3_3 = Basic(192, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7x3_4 = Basic(192, 192, kernel_size=3, stride=2)

  def forward(self, x):
    b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
    return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class E(nn.Module):
  def __init__(self, cin, max_pooled):
    super().__init__()
    self.max_pooled = max_pooled
    r, c = dict(kernel_size=(1, 3), padding=(0, 1)), dict(kernel_size=(3, 1), padding=(1, 0))
    self.branch1x1 = Basic(cin, 320, kernel_size=1)
    self.branch3x3_1, self.branch3x3_2a, self.branch3x3_2b = (
      Basic(cin, 384, kernel_size=1),
      Basic(384, 384, **r),
      Basic(384, 384, **c),
    )
    self.branch3x3dbl_1 = Basic(cin, 448, kernel_size=1)
    self.branch3x3dbl_2 = Basic(448, 384, kernel_size=3, padding=1)
    self.branch3x3dbl_3a, self.branch3x3dbl_3b = Basic(384, 384, **r), Basic(384, 384, **c)
    self.branch_pool = Basic(cin, 192, kernel_size=1)

  def forward(self, x):
    b = self.branch3x3_1(x)
    d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pooled else _avg(x)
    parts = [self.branch1x1(x), self.branch3x3_2a(b), self.branch3x3_2b(b), self.branch3x3dbl_3a(d)]
    return torch.cat(parts + [self.branch3x3dbl_3b(d), self.branch_pool(pooled)], 1)


class FIDInception(nn.Module):
  """pytorch-fid's InceptionV3(output_blocks=[3]) over fid_inception_v3(): same keys as the .pth."""

  def __init__(self):
    super().__init__()
    self.Conv2d_1a_3x3 = Basic(3, 32, kernel_size=3, stride=2)
    self.Conv2d_2a_3x3 = Basic(32, 32, kernel_size=3)
    self.Conv2d_2b_3x3 = Basic(32, 64, kernel_size=3, padding=1)
    self.Conv2d_3b_1x1 = Basic(64, 80, kernel_size=1)
    self.Conv2d_4a_3x3 = Basic(80, 192, kernel_size=3)
    self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = A(192, 32), A(256, 64), A(288, 64)
    self.Mixed_6a = B(288)
    self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e = C(768, 128), C(768, 160), C(768, 160), C(768, 192)
    self.Mixed_7a, self.Mixed_7b, self.Mixed_7c = D(768), E(1280, False), E(2048, True)
    self.fc = nn.Linear(2048, 1008)

  def forward(self, x, resize=True):  # x: [B, 3, H, W] in [0, 1]
    if resize:
      x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    x = 2 * x - 1
    x = F.max_pool2d(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))), 3, stride=2)
    x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
    for n in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
      x = getattr(self, f"Mixed_{n}")(x)
    return F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  torch.manual_seed(0)
  ref = FIDInception().eval()
  with torch.no_grad():  # random statistics, so batch norm is not the identity
    for m in ref.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.2, 0.2)
        m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2.0)
  path = tmp_path_factory.mktemp("inception") / "pt_inception.pth"
  torch.save(ref.state_dict(), path)
  return ref, load_fid_inception(path)


def test_pool3_features_match_pytorch_fid(converted):
  ref, model = converted
  x = np.random.default_rng(0).uniform(0, 1, (2, 80, 96, 3)).astype(np.float32)  # >= 75 px: no resize needed
  with torch.no_grad():
    want = ref(torch.from_numpy(x.transpose(0, 3, 1, 2)), resize=False).numpy()
  got = np.asarray(nnx.jit(lambda m, v: m(v))(model, jnp.asarray(2 * x - 1)))
  assert got.shape == (2, 2048)
  scale = np.abs(want).max()
  assert scale > 1e-3 and np.abs(got - want).max() <= 1e-4 * max(1.0, scale)


def test_resize_to_299_matches_interpolate():
  x = np.random.default_rng(1).uniform(0, 1, (1, 64, 40, 3)).astype(np.float32)
  want = F.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)), size=(299, 299), mode="bilinear", align_corners=False)
  got = np.asarray(jax.jit(pytorch_fid_input)(jnp.asarray(x)))
  np.testing.assert_allclose(got, 2 * want.numpy().transpose(0, 2, 3, 1) - 1, atol=1e-5)


def test_missing_weights_name_the_path_and_source(tmp_path):
  with pytest.raises(CheckpointError, match=r"nowhere\.pth.*pytorch-fid/releases"):
    load_fid_inception(tmp_path / "nowhere.pth")

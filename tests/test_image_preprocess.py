"""WeGen's image transform on real PNG/JPEG files: our numpy/PIL function against the
torchvision pipeline of src/processer/transforms.py, restated with PIL + torch because
torchvision itself cannot be installed here (torchvision's Resize on PIL images calls
PIL's `Image.resize` with the same filter, ToTensor divides by 255, Normalize subtracts
and divides per channel in float32)."""

import numpy as np
import pytest
from PIL import Image

from wegen_jax.data.image_preprocess import CLIP_MEAN, CLIP_STD, PreprocessImage, preprocess_image, sd_preprocess

torch = pytest.importorskip("torch")


def torchvision_reference(path, size, keep_ratio, resample=Image.Resampling.BILINEAR, mean=CLIP_MEAN, std=CLIP_STD):
  img = Image.open(path).convert("RGB")
  if keep_ratio:  # Resize(size): short side -> size, long side int(size * long / short); CenterCrop
    w, h = img.size
    if w <= h:
      nw, nh = size, int(size * h / w)
    else:
      nw, nh = int(size * w / h), size
    if (nw, nh) != (w, h):
      img = img.resize((nw, nh), resample)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
  else:
    img = img.resize((size, size), resample)
  x = torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
  m, s = torch.as_tensor(mean), torch.as_tensor(std)
  return x.sub(m[:, None, None]).div(s[:, None, None]).numpy()


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
  d = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[0:171, 0:250]
  smooth = np.stack([xx % 256, yy * 1.4 % 256, (xx + yy) % 256], -1).astype(np.uint8)
  noisy = rng.integers(0, 256, size=(300, 190, 3), dtype=np.uint8)
  files = {}
  Image.fromarray(smooth).save(d / "wide.png")
  files["png_rgb_wide"] = d / "wide.png"
  Image.fromarray(noisy).save(d / "tall.jpg", quality=90)
  files["jpeg_tall"] = d / "tall.jpg"
  rgba = np.concatenate([noisy[:120, :120], rng.integers(0, 256, (120, 120, 1), dtype=np.uint8)], -1)
  Image.fromarray(rgba, "RGBA").save(d / "alpha.png")
  files["png_rgba"] = d / "alpha.png"
  Image.fromarray(smooth[..., 0]).convert("L").save(d / "gray.jpg")
  files["jpeg_gray"] = d / "gray.jpg"
  return files


@pytest.mark.parametrize("keep_ratio", [False, True])
def test_clip_448_matches_reference(image_files, keep_ratio):
  for name, path in image_files.items():
    got = preprocess_image(path.read_bytes(), 448, keep_ratio=keep_ratio)
    want = torchvision_reference(path, 448, keep_ratio)
    assert got.shape == (3, 448, 448) and got.dtype == np.float32, name
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0, err_msg=name)


def test_sd_branch_and_inputs(image_files):
  path = image_files["jpeg_tall"]
  got = sd_preprocess(str(path), 64, keep_ratio=True)
  want = torchvision_reference(path, 64, True, Image.Resampling.BICUBIC, (0.5,) * 3, (0.5,) * 3)
  np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
  arr = np.asarray(Image.open(path).convert("RGB"))
  np.testing.assert_array_equal(preprocess_image(arr, 32), preprocess_image(path, 32))
  with pytest.raises(FileNotFoundError, match="missing.png"):
    preprocess_image(str(path.parent / "missing.png"))


def test_grain_map(image_files):
  grain = pytest.importorskip("grain")
  records = [{"image": p.read_bytes(), "id": i} for i, p in enumerate(image_files.values())]
  ds = grain.MapDataset.source(records).map(PreprocessImage(image_size=56)).batch(2)
  batch = ds[0]
  assert batch["pixel_values"].shape == (2, 3, 56, 56)
  np.testing.assert_allclose(
    batch["pixel_values"][1], torchvision_reference(list(image_files.values())[1], 56, False), atol=1e-6
  )

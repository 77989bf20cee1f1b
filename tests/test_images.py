"gpm_nb.data images: folders, MNIST / CIFAR-10 / CelebA from small files in their real on-disk formats, errors; 64 px nets."
import gzip, io, json, pickle, subprocess, sys
from pathlib import Path
import numpy as np, pytest, torch
from PIL import Image
from gpm_nb.core import seed_everything
from gpm_nb.data import (DATASETS, IMAGE_DATASETS, ArrayData, ImageData, dataset_names, get_dataset, load_image_folder,
                         read_idx, mnist, cifar10, celeba64, data_root)
from gpm_nb.nets import ConvNet, ConvGenerator

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------------------ writers of the real formats

def save_img(path, a, **kw):
    "Write uint8 `a`, (h, w) grey or (h, w, c), as an image file whose format follows the suffix."
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, **kw); return path

def write_idx(path, a, gz=False, type_byte=0x08):
    "An idx file as in MNIST: 00 00 TYPE NDIM, big-endian uint32 sizes, then the values; gzip-compressed if `gz`."
    b = bytes([0, 0, type_byte, a.ndim]) + np.array(a.shape, '>u4').tobytes() + a.tobytes()
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(b) if gz else b); return path

def make_mnist(root, n=6, gz=False):
    x, y = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8), RNG.integers(0, 10, n).astype(np.uint8)
    x[0] = 0; x[0, 0, 0] = 255  # image 0: one white pixel, else black
    sfx = '.gz' if gz else ''
    write_idx(Path(root)/'MNIST'/'raw'/f'train-images-idx3-ubyte{sfx}', x, gz)
    write_idx(Path(root)/'MNIST'/'raw'/f'train-labels-idx1-ubyte{sfx}', y, gz)
    return x, y

class Py2Pickler(pickle._Pickler):
    "Pickles bytes as Python 2 `str` (SHORT_BINSTRING / BINSTRING), as the original CIFAR-10 batches."
    dispatch = pickle._Pickler.dispatch.copy()
    def save_py2_str(self, obj):
        n = len(obj)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256 else pickle.BINSTRING + n.to_bytes(4, 'little') + obj)
        self.memoize(obj)
    dispatch[bytes] = save_py2_str

def write_cifar_batch(path, x, y):
    "A CIFAR-10 python batch: a protocol-2 pickle of {b'batch_label', b'labels', b'data', b'filenames'}, py2 strings."
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump({b'batch_label': b'training batch 1 of 5', b'labels': [int(v) for v in y],
                                      b'data': x, b'filenames': [b'img_%d.png' % i for i in range(len(x))]})
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue().replace(b'cnumpy._core.multiarray\n', b'cnumpy.core.multiarray\n')); return path

def make_cifar(root, k=3):
    xs, ys = RNG.integers(0, 256, (5, k, 3072), dtype=np.uint8), RNG.integers(0, 10, (5, k))
    for i in range(5): write_cifar_batch(Path(root)/'cifar-10-batches-py'/f'data_batch_{i + 1}', xs[i], ys[i])
    return xs, ys

def face():
    "A 178x218 'aligned face': grey 100 in the centred 178x178 square, a red band above, a green one below."
    a = np.full((218, 178, 3), 100, np.uint8); a[:20] = (255, 0, 0); a[198:] = (0, 255, 0)
    return a

def make_celeba(root, n=3):
    folder = Path(root)/'celeba'/'img_align_celeba'
    for k in range(1, n + 1): save_img(folder/f'{k:06d}.jpg', face(), quality=95)
    return folder


# ------------------------------------------------------------------------------------------- image folders

def test_folder_of_grey_pngs_round_trips(tmp_path):
    grey = RNG.integers(0, 256, (3, 5, 7), dtype=np.uint8)
    for k, name in enumerate(['a.png', 'B.PNG', 'sub/c.png']): save_img(tmp_path/'f'/name, grey[k])
    save_img(tmp_path/'f'/'.hidden'/'d.png', grey[0]); save_img(tmp_path/'f'/'.e.png', grey[0])
    (tmp_path/'f'/'notes.txt').write_text('not an image')
    x = load_image_folder(tmp_path/'f')
    assert x.shape == (3, 1, 5, 7) and x.dtype == torch.float32
    # recursive, hidden files skipped, sorted by relative path ('B.PNG' < 'a.png' < 'sub/c.png')
    assert torch.equal(x[:, 0], torch.from_numpy(grey[[1, 0, 2]]).float())
    assert x.min() >= 0 and x.max() <= 255


def test_folder_of_rgb_jpegs(tmp_path):
    smooth = np.broadcast_to(np.linspace(0, 255, 16)[None, :, None], (16, 16, 3)).astype(np.uint8).copy()
    for name in ('a.jpg', 'b.JPEG', 'c.jpeg'): save_img(tmp_path/name, smooth, quality=95)
    x = load_image_folder(tmp_path)
    assert x.shape == (3, 3, 16, 16)
    assert (x - torch.from_numpy(smooth).permute(2, 0, 1).float()).abs().max() < 8  # JPEG is lossy, but close


def test_folder_size_crops_the_centred_square_and_resizes(tmp_path):
    wide = np.zeros((4, 8), np.uint8); wide[:, 2:6] = 200     # its centred 4x4 square is 200, the margins 0
    save_img(tmp_path/'w'/'a.png', wide)
    assert torch.equal(load_image_folder(tmp_path/'w', size=4), torch.full((1, 1, 4, 4), 200.))
    assert torch.equal(load_image_folder(tmp_path/'w', size=2), torch.full((1, 1, 2, 2), 200.))  # margins never enter
    tall = np.zeros((9, 3, 3), np.uint8); tall[3:6] = 50
    save_img(tmp_path/'t'/'a.png', tall)
    assert torch.equal(load_image_folder(tmp_path/'t', size=3), torch.full((1, 3, 3, 3), 50.))
    cb = (np.indices((8, 8)).sum(0) % 2 * 255).astype(np.uint8)
    save_img(tmp_path/'c'/'a.png', cb)
    assert ((load_image_folder(tmp_path/'c', size=2) - 127.5).abs() < 3).all()  # antialiased: the average, not aliasing
    x = load_image_folder(tmp_path/'c', size=16)  # upsizing works too, values stay in 0..255
    assert x.shape == (1, 1, 16, 16) and x.min() >= 0 and x.max() <= 255


def test_folder_mixed_modes(tmp_path):
    rgb = RNG.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    save_img(tmp_path/'m'/'1.png', rgb); save_img(tmp_path/'m'/'2.png', rgb)
    save_img(tmp_path/'m'/'3.png', rgb[..., 0])
    x = load_image_folder(tmp_path/'m')
    assert x.shape == (3, 3, 5, 6)                                  # the RGB majority
    assert torch.equal(x[2], torch.from_numpy(rgb[..., 0]).float().expand(3, -1, -1))  # grey -> RGB repeats
    g = load_image_folder(tmp_path/'m', channels=1)
    luma = np.array(Image.fromarray(rgb).convert('L'))
    assert g.shape == (3, 1, 5, 6) and torch.equal(g[0, 0], torch.from_numpy(luma).float())
    save_img(tmp_path/'m'/'4.png', rgb[..., 1]); save_img(tmp_path/'m'/'5.png', rgb[..., 2])
    assert load_image_folder(tmp_path/'m').shape == (5, 1, 5, 6)    # now a grey majority
    save_img(tmp_path/'tie'/'a.png', rgb); save_img(tmp_path/'tie'/'b.png', rgb[..., 0])
    assert load_image_folder(tmp_path/'tie').shape == (2, 3, 5, 6)  # a tie goes to RGB
    rgba = np.concatenate([rgb, np.full((5, 6, 1), 7, np.uint8)], 2)
    save_img(tmp_path/'a'/'a.png', rgba)
    assert torch.equal(load_image_folder(tmp_path/'a')[0], torch.from_numpy(rgb).permute(2, 0, 1).float())  # alpha dropped
    save_img(tmp_path/'p'/'a.png', np.array([[0, 257 * 100, 65535]], np.uint16))  # 16-bit grey
    assert torch.equal(load_image_folder(tmp_path/'p'), torch.tensor([[[[0., 100., 255.]]]]))


def test_folder_mixed_sizes_need_size(tmp_path):
    save_img(tmp_path/'a.png', np.zeros((5, 7), np.uint8)); save_img(tmp_path/'b.png', np.zeros((5, 7), np.uint8))
    save_img(tmp_path/'c.png', np.zeros((6, 7), np.uint8))
    with pytest.raises(ValueError) as e: load_image_folder(tmp_path)
    assert f"'{tmp_path/'c.png'}' is 7x6 px but '{tmp_path/'a.png'}' is 7x5" in str(e.value) and 'size=' in str(e.value)
    assert load_image_folder(tmp_path, size=4).shape == (3, 1, 4, 4)


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match='no such folder') as e: load_image_folder(tmp_path/'nowhere')
    assert str(tmp_path/'nowhere') in str(e.value)
    (tmp_path/'empty').mkdir(); (tmp_path/'empty'/'a.gif').write_bytes(b'GIF89a')
    with pytest.raises(ValueError, match=r'no image files in .* or its subfolders: looked for \.png, \.jpg, \.jpeg') as e:
        load_image_folder(tmp_path/'empty')
    assert str(tmp_path/'empty') in str(e.value)
    save_img(tmp_path/'bad'/'a.png', np.zeros((4, 4), np.uint8))
    (tmp_path/'bad'/'b.png').write_bytes(b'\x89PNG not really')
    with pytest.raises(ValueError, match='cannot read image') as e: load_image_folder(tmp_path/'bad')
    assert str(tmp_path/'bad'/'b.png') in str(e.value)
    b = io.BytesIO(); Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(b, 'JPEG')
    save_img(tmp_path/'cut'/'a.jpg', np.zeros((64, 64, 3), np.uint8))
    (tmp_path/'cut'/'b.jpg').write_bytes(b.getvalue()[:len(b.getvalue()) // 2])  # header intact, pixels cut
    with pytest.raises(ValueError, match='truncated') as e: load_image_folder(tmp_path/'cut')
    assert str(tmp_path/'cut'/'b.jpg') in str(e.value)
    with pytest.raises(ValueError, match='is not a folder'): load_image_folder(tmp_path/'bad'/'a.png')
    with pytest.raises(ValueError, match='size must be a positive integer'): load_image_folder(tmp_path/'cut', size=0)
    with pytest.raises(ValueError, match='channels must be 1'): load_image_folder(tmp_path/'cut', channels=2)


def test_get_dataset_of_a_folder(tmp_path):
    grey = RNG.integers(0, 256, (4, 6, 6), dtype=np.uint8)
    for k in range(4): save_img(tmp_path/'pics'/f'{k}.png', grey[k])
    ds = get_dataset(str(tmp_path/'pics'))
    assert isinstance(ds, ArrayData) and (ds.name, ds.shape, len(ds)) == ('pics', (1, 6, 6), 4)
    assert torch.equal(ds.x[:, 0], torch.from_numpy(grey).float())  # raw 0..255: the CLI standardises paths
    assert get_dataset(tmp_path/'pics', image_size=3).shape == (1, 3, 3)
    with pytest.raises(ValueError, match='image_size applies to folders of images only'): get_dataset('moons', image_size=3)
    with pytest.raises(FileNotFoundError, match='no such file or folder'): get_dataset(str(tmp_path/'nope'))
    with pytest.raises(ValueError, match='neither a .npy/.npz array, a .csv table nor a folder'): get_dataset(str(tmp_path/'pics'/'0.png'))


# ------------------------------------------------------------------------------------------------ ImageData

def test_image_data_keeps_uint8_and_samples_in_unit_range():
    u8 = torch.tensor([0, 51, 255], dtype=torch.uint8)[:, None, None, None].expand(3, 2, 3, 3).clone()
    ds = ImageData(u8, 'three', labels=[0, 1, 2])
    assert (ds.shape, ds.dim, len(ds), ds.data.dtype) == ((2, 3, 3), 18, 3, torch.uint8)
    seed_everything(0); s = ds.sample(300, device='cpu')
    assert s.shape == (300, 2, 3, 3) and s.dtype == torch.float32
    assert sorted(s[:, 0, 0, 0].unique().tolist()) == pytest.approx([-1., 51 / 127.5 - 1, 1.])
    assert s.min() == -1 and s.max() == 1
    seed_everything(0); assert torch.equal(ds.sample(300, device='cpu'), s)
    assert torch.allclose(ds.x[:, 0, 0, 0], torch.tensor([-1., 51 / 127.5 - 1, 1.]))
    with pytest.raises(ValueError, match='uint8 tensor'): ImageData(u8.float())
    with pytest.raises(ValueError, match='n must be a positive integer'): ds.sample(0)


# -------------------------------------------------------------------------------------------------- MNIST

@pytest.mark.parametrize('gz', [False, True])
def test_mnist_reads_idx_and_pads_to_32(tmp_path, monkeypatch, gz):
    x, y = make_mnist(tmp_path/'data', gz=gz)
    monkeypatch.setenv('GPM_DATA', str(tmp_path/'data'))
    ds = mnist()
    assert isinstance(ds, ImageData) and (ds.name, ds.shape, len(ds)) == ('mnist', (1, 32, 32), 6)
    assert torch.equal(ds.labels, torch.from_numpy(y).long())
    assert torch.equal(ds.data[:, 0, 2:30, 2:30], torch.from_numpy(x))            # the digits, in the middle
    assert ds.data[:, :, :2].sum() == 0 and ds.data[:, :, 30:].sum() == 0           # black 2 px borders
    assert ds.data[:, :, :, :2].sum() == 0 and ds.data[:, :, :, 30:].sum() == 0
    img0 = ds.x[0, 0]
    assert img0[2, 2] == 1 and (img0 == -1).sum() == 32 * 32 - 1                    # in [-1, 1]
    seed_everything(1); s = ds.sample(50, device='cpu')
    assert s.shape == (50, 1, 32, 32) and s.min() >= -1 and s.max() <= 1
    assert get_dataset('mnist').shape == (1, 32, 32)


def test_mnist_root_argument_and_default_folder(tmp_path, monkeypatch):
    make_mnist(tmp_path/'elsewhere')
    monkeypatch.setenv('GPM_DATA', str(tmp_path/'not_here'))
    assert len(mnist(tmp_path/'elsewhere')) == 6                    # root= wins over GPM_DATA
    monkeypatch.delenv('GPM_DATA'); monkeypatch.chdir(tmp_path)
    assert data_root() == Path('data')
    make_mnist(tmp_path/'data', n=2)
    assert len(mnist()) == 2                                        # ./data by default


def test_mnist_missing_files_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv('GPM_DATA', str(tmp_path/'data'))
    with pytest.raises(FileNotFoundError) as e: mnist()
    msg = str(e.value)
    assert str(tmp_path/'data'/'MNIST'/'raw'/'train-images-idx3-ubyte') in msg and 'train-labels-idx1-ubyte' in msg
    assert 'Nothing is downloaded' in msg and 'GPM_DATA' in msg
    x = RNG.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    write_idx(tmp_path/'data'/'MNIST'/'raw'/'train-images-idx3-ubyte', x)
    with pytest.raises(FileNotFoundError, match='train-labels-idx1-ubyte'): mnist()


def test_mnist_malformed_files(tmp_path, monkeypatch):
    monkeypatch.setenv('GPM_DATA', str(tmp_path))
    raw = tmp_path/'MNIST'/'raw'
    make_mnist(tmp_path)
    f = raw/'train-images-idx3-ubyte'; good = f.read_bytes()
    f.write_bytes(b'\x00\x00\x07\x03' + good[4:])                  # unknown type byte
    with pytest.raises(ValueError, match='is not an idx file: bad magic number 00000703') as e: mnist()
    assert str(f) in str(e.value)
    f.write_bytes(b'\x01\x00\x08\x03' + good[4:])
    with pytest.raises(ValueError, match='bad magic number 01000803'): mnist()
    f.write_bytes(good[:-10])
    with pytest.raises(ValueError, match='needs 4704 bytes of data, the file holds 4694'): mnist()
    write_idx(f, RNG.integers(0, 256, (6, 27, 27), dtype=np.uint8))
    with pytest.raises(ValueError, match=r'expected uint8 images of shape \(n, 28, 28\)'): mnist()
    write_idx(f, RNG.integers(0, 256, (5, 28, 28), dtype=np.uint8))  # 5 images, 6 labels
    with pytest.raises(ValueError, match='expected 5 uint8 labels 0..9') as e: mnist()
    assert str(raw/'train-labels-idx1-ubyte') in str(e.value)
    (raw/'train-labels-idx1-ubyte').unlink(); (raw/'train-labels-idx1-ubyte.gz').write_bytes(b'not gzip')
    with pytest.raises(ValueError, match='cannot decompress'): mnist()


def test_read_idx_other_types(tmp_path):
    a = np.array([[-3, 2], [1000, 7]], '>i2')
    assert np.array_equal(read_idx(write_idx(tmp_path/'a', a, type_byte=0x0B)), a.astype(np.int16))
    b = np.array([0.5, -2.25], '>f8')
    assert np.array_equal(read_idx(write_idx(tmp_path/'b.gz', b, gz=True, type_byte=0x0E)), b)
    (tmp_path/'e').write_bytes(b'')
    with pytest.raises(ValueError, match='empty file'): read_idx(tmp_path/'e')
    with pytest.raises(FileNotFoundError): read_idx(tmp_path/'nope')


# ----------------------------------------------------------------------------------------------- CIFAR-10

def test_cifar10_reads_the_python_batches(tmp_path, monkeypatch):
    xs, ys = make_cifar(tmp_path/'data')
    first = (tmp_path/'data'/'cifar-10-batches-py'/'data_batch_1').read_bytes()
    assert first[:2] == b'\x80\x02'  # protocol 2, like the original
    monkeypatch.setenv('GPM_DATA', str(tmp_path/'data'))
    ds = cifar10()
    assert isinstance(ds, ImageData) and (ds.name, ds.shape, len(ds)) == ('cifar10', (3, 32, 32), 15)
    assert torch.equal(ds.labels, torch.from_numpy(ys.reshape(-1)).long())
    # row layout: 1024 red, 1024 green, 1024 blue values, each 32x32 row-major; image 4 is batch 2's second
    assert torch.equal(ds.data[4], torch.from_numpy(xs[1, 1].reshape(3, 32, 32)))
    assert ds.data[4, 2, 31, 0] == xs[1, 1, 2048 + 31 * 32]
    seed_everything(2); s = ds.sample(40, device='cpu')
    assert s.shape == (40, 3, 32, 32) and s.min() >= -1 and s.max() <= 1
    assert get_dataset('cifar10').shape == (3, 32, 32)


def test_cifar10_errors(tmp_path, monkeypatch):
    monkeypatch.setenv('GPM_DATA', str(tmp_path))
    d = tmp_path/'cifar-10-batches-py'
    with pytest.raises(FileNotFoundError) as e: cifar10()
    assert str(d/'data_batch_1') in str(e.value) and 'Nothing is downloaded' in str(e.value) and 'GPM_DATA' in str(e.value)
    make_cifar(tmp_path)
    cases = [(pickle.dumps({b'data': print}, protocol=2), 'refusing to load'),       # no code runs from the file
             (b'garbage', 'cannot read'),
             (pickle.dumps([1, 2], protocol=2), 'expected a dict'),
             (pickle.dumps({b'data': np.zeros((2, 3072), np.float32), b'labels': [0, 1]}, protocol=2), 'got float32'),
             (pickle.dumps({b'data': np.zeros((2, 1024), np.uint8), b'labels': [0, 1]}, protocol=2), r'\(k, 3072\)'),
             (pickle.dumps({b'data': np.zeros((2, 3072), np.uint8)}, protocol=2), "expected b'labels', 2 integers"),
             (pickle.dumps({b'data': np.zeros((2, 3072), np.uint8), b'labels': [0, 10]}, protocol=2), 'integers 0..9')]
    for content, msg in cases:
        (d/'data_batch_3').write_bytes(content)
        with pytest.raises(ValueError, match=msg) as e: cifar10()
        assert str(d/'data_batch_3') in str(e.value)
    # a batch pickled by Python 3 with str keys reads too
    (d/'data_batch_3').write_bytes(pickle.dumps({'data': np.zeros((2, 3072), np.uint8), 'labels': [0, 1]}))
    assert len(cifar10()) == 14


# ------------------------------------------------------------------------------------------------- CelebA

def test_celeba64_crops_the_centred_square(tmp_path, monkeypatch):
    make_celeba(tmp_path/'data')
    monkeypatch.setenv('GPM_DATA', str(tmp_path/'data'))
    ds = celeba64()
    assert isinstance(ds, ImageData) and (ds.name, ds.shape, len(ds)) == ('celeba64', (3, 64, 64), 3)
    # the red and green bands lie outside the centred 178x178 square: gone (up to JPEG's blur across the edge);
    # a resize of the whole image would keep ~6 rows of each, at 155 from the grey
    err = (ds.data.float() - 100).abs()
    assert (err[:, :, 2:-2] < 6).all() and (err < 30).all()
    seed_everything(3); s = ds.sample(5, device='cpu')
    assert s.shape == (5, 3, 64, 64) and s.min() >= -1 and s.max() <= 1
    assert len(celeba64(n_max=2)) == 2 and get_dataset('celeba64').shape == (3, 64, 64)


def test_celeba64_training_split(tmp_path, monkeypatch):
    folder = make_celeba(tmp_path, n=4)
    monkeypatch.setenv('GPM_DATA', str(tmp_path))
    (folder.parent/'list_eval_partition.txt').write_text('000001.jpg 0\n000002.jpg 1\n000003.jpg 2\n000004.jpg 0\n')
    assert len(celeba64()) == 2
    (folder.parent/'list_eval_partition.txt').write_text('000001.jpg 0\n000002.jpg x\n')
    with pytest.raises(ValueError, match='line 2') as e: celeba64()
    assert str(folder.parent/'list_eval_partition.txt') in str(e.value)


def test_celeba64_errors(tmp_path, monkeypatch):
    monkeypatch.setenv('GPM_DATA', str(tmp_path))
    folder = tmp_path/'celeba'/'img_align_celeba'
    with pytest.raises(FileNotFoundError) as e: celeba64()
    assert str(folder) in str(e.value) and 'Nothing is downloaded' in str(e.value) and 'GPM_DATA' in str(e.value)
    folder.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match='no images in'): celeba64()
    make_celeba(tmp_path, n=2)
    (folder/'000003.jpg').write_bytes(b'\xff\xd8\xff not a jpeg')
    with pytest.raises(ValueError, match='cannot read image') as e: celeba64()
    assert str(folder/'000003.jpg') in str(e.value)
    with pytest.raises(ValueError, match='n_max must be a positive integer'): celeba64(n_max=0)


# ---------------------------------------------------------------------------------------------- registries

def test_registries(tmp_path, monkeypatch):
    assert list(IMAGE_DATASETS) == ['mnist', 'cifar10', 'celeba64'] and not set(IMAGE_DATASETS) & set(DATASETS)
    assert dataset_names() == list(DATASETS) + ['mnist', 'cifar10', 'celeba64']
    monkeypatch.setenv('GPM_DATA', str(tmp_path/'nothing'))
    toys = [name for name, make in DATASETS.items() if getattr(make(), 'shape', None) == (2,)]  # as 30_report does
    assert len(toys) == 10
    for name in IMAGE_DATASETS:
        with pytest.raises(FileNotFoundError, match='Nothing is downloaded'): get_dataset(name)
    with pytest.raises(ValueError, match='digits, mnist, cifar10, celeba64, or a path'): get_dataset('imagenet')


def test_import_loads_nothing(tmp_path):
    "Importing gpm_nb.data reads no data file, even when GPM_DATA points at broken ones."
    (tmp_path/'MNIST'/'raw').mkdir(parents=True)
    (tmp_path/'MNIST'/'raw'/'train-images-idx3-ubyte').write_bytes(b'broken')
    r = subprocess.run([sys.executable, '-c', 'import gpm_nb.data as d; print(sorted(d.IMAGE_DATASETS))'], capture_output=True,
                       text=True, timeout=120, env={**__import__('os').environ, 'GPM_DATA': str(tmp_path)})
    assert r.returncode == 0 and "['celeba64', 'cifar10', 'mnist']" in r.stdout, r.stderr


# ------------------------------------------------------------------------------------------ nets at 64 px

def test_nets_at_64_px():
    seed_everything(4)
    G = ConvGenerator(latent=16, c_out=3, size=64, width=4)
    D = ConvNet(3, 64, width=4, t_emb=8)
    x = G(torch.randn(3, 16))
    assert x.shape == (3, 3, 64, 64) and (x.abs() <= 1).all() and len(G.blocks) == 4
    assert D(x, torch.rand(3)).shape == (3,) and len(D.blocks) == 5
    assert ConvNet(3, 64, width=4, d_out=7, t_emb=0)(x).shape == (3, 7)
    with pytest.raises(ValueError, match='8, 28, 32 or 64 px images, got 48'): ConvNet(3, 48)
    with pytest.raises(ValueError, match=r'shape \(\*, 3, 64, 64\)'): D(torch.randn(2, 3, 32, 32), torch.rand(2))


# ---------------------------------------------------- the papers' image presets (GPM, EDM, Diffusion-GAN), for GPU users

def make_cifar6(root, n=6): make_cifar(root, k=2)   # 10 images: two per batch file

@pytest.mark.parametrize('method,preset,make,want,steps,batch', [
    ('discr_flow', 'mnist', make_mnist, dict(loss='ipm', K=64, eta=2., gp=0.04, gp_center=0.), 200_000, 128),
    ('discr_flow', 'celeba64', make_celeba, dict(loss='ipm', K=25, eta=2., gp=0.05, gp_center=0.), 200_000, 64),
    ('gan', 'mnist', make_mnist, dict(loss='vanilla', latent=128, gp=0.), 10_000, 128),
    ('gan', 'celeba64', make_celeba, dict(loss='hinge', latent=128, width=256, g_width=256), 100_000, 64),
    ('gan', 'cifar10', make_cifar6, dict(loss='vanilla', latent=512, lr=2.5e-3, g_lr=2.5e-3, beta1=0., beta2=0.99, gp=0.005,
                                         gp_on='real', ema=0.99991), 781_250, 64),
    ('diffusion_gan', 'cifar10', make_cifar6, dict(loss='vanilla', latent=512, lr=2.5e-3, gp=0.005, gp_on='real', sigma_n=0.05,
                                                   d_target=0.6, ts_dist='priority', T_min=10, T_max=1000, ada_kimg=100.), 781_250, 64),
    ('edm', 'mnist', make_mnist, dict(sigma_min=0.002, sigma_max=40., sigma_data=0.5, sampler='heun', sample_steps=32, width=128), 500_000, 128),
    ('edm', 'celeba64', make_celeba, dict(sigma_min=0.002, sigma_max=40., sigma_data=0.5, sampler='heun', sample_steps=25, width=1024), 100_000, 64),
    ('edm', 'cifar10', make_cifar6, dict(sigma_min=0.002, sigma_max=80., sigma_data=0.5, sampler='heun', sample_steps=18, width=1024,
                                         lr=1e-3, ema=0.99929), 390_625, 512)])
def test_paper_image_presets_train_on_the_real_formats(tmp_path, monkeypatch, capsys, method, preset, make, want, steps, batch):
    "Each image configuration of the papers (GPM's MNIST and CelebA; Diffusion-GAN's and EDM's CIFAR-10) holds the values of the paper's code and trains on the data set's files (stand-ins in the real format)."
    from gpm_nb.cli import gpm_train, run_configs
    from helpers import cli
    run, cfg = run_configs(method, preset)
    assert {k: getattr(cfg, k) for k in want} == want and (run.steps, run.batch_size) == (steps, batch)
    make(tmp_path/'data', n=6); monkeypatch.setenv('GPM_DATA', str(tmp_path/'data'))
    if make is make_celeba:                                   # six different images: the stand-in faces are all alike
        for f in (tmp_path/'data'/'celeba'/'img_align_celeba').iterdir():   # random blocks of 20 px, which JPEG keeps (pixel noise it smooths)
            save_img(f, RNG.integers(0, 256, (11, 9, 3), dtype=np.uint8).repeat(20, 0).repeat(20, 1)[:218, :178], quality=95)
    few = ['--sampler', 'euler', '--sample_steps', 2] if method == 'edm' else []   # the wiring, not 63 U-Net evaluations of an untrained net
    code, msg = cli(capsys, gpm_train, '--method', method, '--data', preset, '--preset', preset, '--steps', 2, '--eval_every', 1000,
                    '--batch_size', 4, '--n_eval', 8, '--n_samples', 8, '--out', tmp_path/'r', '--quiet', *few)
    assert code == 0, msg
    shape = {'mnist': (1, 32, 32), 'cifar10': (3, 32, 32), 'celeba64': (3, 64, 64)}[preset]
    assert np.load(tmp_path/'r'/'samples.npy').shape == (8, *shape)
    assert json.loads((tmp_path/'r'/'config.json').read_text())['preset'] == preset

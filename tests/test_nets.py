"gpm_nb.nets: generators (the MLP without time for vectors, ConvGenerator for images) and their errors."
import pytest, torch
from gpm_nb.core import seed_everything
from gpm_nb.nets import MLP, ConvGenerator, UpBlock


def test_mlp_without_time_is_a_vector_generator():
    seed_everything(0)
    g = MLP(16, 3, width=32, depth=2, t_emb=0)
    z = torch.randn(10, 16)
    x = g(z)
    assert x.shape == (10, 3) and g.embed is None
    assert torch.equal(g(z), x)  # no time, no randomness in forward
    (-(x * torch.randn_like(x)).sum(1).mean()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in g.parameters())
    with pytest.raises(ValueError, match=r'shape \(\*, 16\)'): g(torch.randn(10, 2))
    with pytest.raises(ValueError, match='pass t'): MLP(16, 3, 32, 2)(z)  # the default MLP is time-conditioned


def test_up_block_doubles_the_side():
    assert UpBlock(8, 4)(torch.randn(2, 8, 7, 7)).shape == (2, 4, 14, 14)


@pytest.mark.parametrize('c, size', [(1, 8), (3, 8), (1, 28), (3, 28), (1, 32), (3, 32), (3, 64)])
def test_conv_generator_shapes_and_range(c, size):
    seed_everything(1)
    G = ConvGenerator(latent=24, c_out=c, size=size, width=8)
    z = torch.randn(5, 24)
    x = G(z)
    assert x.shape == (5, c, size, size) and x.dtype == torch.float32
    assert (x.abs() <= 1).all() and x.std() > 1e-3
    assert not torch.allclose(x[0], x[1])  # different latents, different images
    assert torch.allclose(G(z[:2]), x[:2], atol=1e-5)  # no batch statistics


def test_conv_generator_gradient_reaches_every_parameter():
    seed_everything(2)
    G = ConvGenerator(latent=16, c_out=3, size=32, width=8)
    x = G(torch.randn(4, 16))
    (-(x * torch.randn_like(x)).flatten(1).sum(1).mean()).backward()
    for name, p in G.named_parameters(): assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_conv_generator_saturates_within_tanh():
    G = ConvGenerator(latent=8, size=8, width=8)
    with torch.no_grad(): G.out.bias.fill_(100.)
    x = G(torch.randn(3, 8))
    assert torch.allclose(x, torch.ones_like(x))


def test_conv_generator_defaults():
    G = ConvGenerator()
    assert (G.latent, G.c_out, G.size) == (128, 1, 8)
    assert G(torch.randn(2, 128)).shape == (2, 1, 8, 8)
    assert G.proj[0].out_features == 128 * 4 * 4 and len(G.blocks) == 1


@pytest.mark.parametrize('kw, msg', [(dict(size=16), 'supports image sizes 8, 28, 32, 64, got 16'),
                                     (dict(size=48), 'got 48'),
                                     (dict(width=0), '>= 1'), (dict(latent=0), '>= 1'), (dict(c_out=0), '>= 1')])
def test_conv_generator_bad_config(kw, msg):
    with pytest.raises(ValueError, match=msg): ConvGenerator(**kw)


def test_conv_generator_bad_latent():
    G = ConvGenerator(latent=32, width=8)
    with pytest.raises(ValueError, match=r'z must have shape \(\*, 32\), got \(4, 31\)'): G(torch.randn(4, 31))
    with pytest.raises(ValueError, match=r'z must have shape \(\*, 32\), got \(4, 32, 1\)'): G(torch.randn(4, 32, 1))
    with pytest.raises(TypeError, match='z must be a torch.Tensor'): G([0.] * 32)

# ---------------------------------------------------------------- the U-Net denoiser

@pytest.mark.parametrize('c, s', [(1, 8), (1, 28), (3, 32), (3, 64)])
def test_unet_keeps_the_shape_and_starts_at_zero(c, s):
    from gpm_nb.nets import UNet
    torch.manual_seed(0)
    u = UNet(c, s, width=8, emb=16)
    x = torch.randn(2, c, s, s)
    y = u(x, torch.tensor([-1., 1.]))
    assert y.shape == x.shape and (y == 0).all()
    y.pow(2).sum().backward()                                   # gradients reach the zero-initialised output layer
    assert u.out[-1].weight.grad is not None

def test_unet_depends_on_the_noise_level_and_refuses_bad_input():
    from gpm_nb.nets import UNet
    torch.manual_seed(0)
    u = UNet(1, 8, width=8, emb=16)
    torch.nn.init.normal_(u.out[-1].weight, std=0.1)
    x = torch.randn(3, 1, 8, 8)
    assert (u(x, torch.zeros(3)) - u(x, torch.ones(3))).abs().max() > 1e-4
    torch.testing.assert_close(u(x, torch.tensor(0.5)), u(x, torch.full((3,), 0.5)))     # a scalar level broadcasts
    with pytest.raises(ValueError, match=r'must have shape \(\*, 1, 8, 8\)'): u(torch.randn(3, 3, 8, 8), torch.zeros(3))
    with pytest.raises(ValueError, match='c_noise must have shape'): u(x, torch.zeros(2))
    with pytest.raises(ValueError, match='8, 28, 32 or 64 px'): UNet(1, 12)
    with pytest.raises(ValueError, match='emb even'): UNet(1, 8, emb=7)

@pytest.mark.parametrize('t_shared', [torch.tensor(.3), torch.full((1,), .3).expand(16)])
def test_mlp_embeds_a_shared_time_once_with_the_same_value_and_gradient(t_shared):
    "A 0-d or expanded time takes the folded first layer; value and input gradient equal the per-sample path's."
    torch.manual_seed(0); D = MLP(2, 1, 64, 3, t_emb=16, init_std=None)
    x = torch.randn(16, 2, requires_grad=True); t_full = torch.full((16,), .3)
    calls = []
    h = D.embed.register_forward_hook(lambda m, a, out: calls.append(out.shape[0]))
    a, b = D(x, t_shared), D(x, t_full)
    h.remove()
    assert calls == [1, 16]                                             # embedded once, then per sample
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    ga, = torch.autograd.grad(a.sum(), x); gb, = torch.autograd.grad(b.sum(), x)
    torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match='t'): D(x, torch.full((1,), .3).expand(15))

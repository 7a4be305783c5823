"""fastpath.prepare() compiles every kernel, and the public API is importable from the top."""
import fastpath


def test_prepare_compiles_every_kernel():
    fastpath.prepare()


def test_public_api_names_resolve():
    for name in fastpath.__all__:
        assert getattr(fastpath, name) is not None, name

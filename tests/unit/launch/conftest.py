from launch_helpers import fake_bin  # noqa: F401  (the fixture, for every test here)

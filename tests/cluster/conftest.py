"""The cluster tests (offline config checks and the local multi-node rehearsal) run in Ray's
token-auth mode, as a real cluster does."""

from tests.helpers import use_ray_token_auth

use_ray_token_auth()

"""In-process stand-in for Swift's memcache filter (no memcached needed).

tempauth asks ``env['swift.cache']`` about any ``AUTH_tk`` token and answers 500
"Memcache required" when there is none; this dict-backed cache gives such tokens a
normal 401 and lets the proxy cache account/container info. Values are JSON
round-tripped like the real client does. One proxy process (workers = 0).
"""

import json
import threading
import time

_THIRTY_DAYS = 30 * 24 * 3600


class DictCache:
    def __init__(self):
        self._items = {}
        self._lock = threading.Lock()

    @staticmethod
    def _deadline(ttl):
        ttl = float(ttl or 0)
        if ttl <= 0:
            return None
        return ttl if ttl > _THIRTY_DAYS else time.time() + ttl

    def _get(self, key):
        item = self._items.get(key)
        if item is not None and item[1] is not None and item[1] <= time.time():
            del self._items[key]
            return None
        return item

    def set(self, key, value, serialize=True, time=0, **kwargs):
        with self._lock:
            stored = json.dumps(value) if serialize else value
            self._items[key] = (stored, self._deadline(time), serialize)

    def get(self, key, **kwargs):
        with self._lock:
            item = self._get(key)
        if item is None:
            return None
        return json.loads(item[0]) if item[2] else item[0]

    def incr(self, key, delta=1, time=0, **kwargs):
        with self._lock:
            item = self._get(key)
            current = 0 if item is None else int(json.loads(item[0]) if item[2] else item[0])
            value = max(current + int(delta), 0)
            deadline = item[1] if item else self._deadline(time)
            self._items[key] = (json.dumps(value), deadline, True)
            return value

    def decr(self, key, delta=1, time=0, **kwargs):
        return self.incr(key, -int(delta), time)

    def delete(self, key, server_key=None, **kwargs):
        with self._lock:
            self._items.pop(key, None)

    def set_multi(self, mapping, server_key, serialize=True, time=0, **kwargs):
        for key, value in mapping.items():
            self.set(key, value, serialize=serialize, time=time)

    def get_multi(self, keys, server_key, **kwargs):
        return [self.get(key) for key in keys]


def filter_factory(global_conf, **local_conf):
    cache = DictCache()

    def make(app):
        def middleware(env, start_response):
            env["swift.cache"] = cache
            return app(env, start_response)

        return middleware

    return make

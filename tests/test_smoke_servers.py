import redis, pymemcache.client.base as pm, ftplib
def test_smoke(redis7, redis6, memcached, vsftpd):
    assert redis.Redis(port=redis7.port).info()["redis_version"].startswith("7.0")
    assert redis.Redis(port=redis6.port).info()["redis_version"].startswith("6.2")
    c = pm.Client(("127.0.0.1", memcached.port)); c.set("a", "b"); assert c.get("a") == b"b"
    f = ftplib.FTP(); f.connect("127.0.0.1", vsftpd.port); f.login(); assert f.nlst() == ["pub"]; f.quit()

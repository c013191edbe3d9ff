{
  "targets": [
    {
      "target_name": "qkey_sm4gcm",
      "sources": ["protocol/native/sm4_gcm.c"],
      "cflags": ["-O3", "-fvisibility=hidden", "-Wall", "-Wextra"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}

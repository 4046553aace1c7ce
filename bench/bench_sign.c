/* What one token signature and one verification cost on this machine: the work
 * POST /v1/sessions/anonymous adds to a durable write, and what a request whose
 * token is not yet remembered pays. Ed25519 through libsodium, as auth/token.c signs,
 * over a message of a session token's size. Prints one JSON object; bench/profile.py
 * puts it into docs/BENCHMARKS.md. Usage: bench_sign [n] (20000). */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 20000;
  if (n < 1 || sodium_init() < 0) return 1;
  unsigned char pk[crypto_sign_PUBLICKEYBYTES], sk[crypto_sign_SECRETKEYBYTES];
  unsigned char sig[crypto_sign_BYTES], msg[300];
  crypto_sign_keypair(pk, sk);
  randombytes_buf(msg, sizeof(msg));
  double t0 = now_us();
  for (int i = 0; i < n; i++) {
    msg[0] = (unsigned char)i; /* a new message each time, as every token differs */
    crypto_sign_detached(sig, NULL, msg, sizeof(msg), sk);
  }
  double t1 = now_us();
  int bad = 0;
  for (int i = 0; i < n; i++)
    bad += crypto_sign_verify_detached(sig, msg, sizeof(msg), pk) != 0;
  double t2 = now_us();
  printf("{\"signatures\":%d,\"sign_us\":%.1f,\"verify_us\":%.1f,\"failed_verifications\":%d,"
         "\"libsodium\":\"%s\"}\n",
         n, (t1 - t0) / n, (t2 - t1) / n, bad, sodium_version_string());
  return bad ? 1 : 0;
}

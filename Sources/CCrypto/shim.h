// OpenSSL's libcrypto (Debian's libssl-dev): the SHA-256 digest behind HubClient's SHA256.
#include <openssl/evp.h>

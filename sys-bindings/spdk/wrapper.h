/* The SPDK surface Ferrite's bdev backend uses (bindgen input). */
#include <spdk/stdinc.h>
#include <spdk/env.h>
#include <spdk/init.h>
#include <spdk/thread.h>
#include <spdk/bdev.h>
#include <spdk/version.h>

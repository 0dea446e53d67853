/* Ferrite's C shim over DPDK's static-inline fast path and macros, which
 * bindgen cannot bind: functions with external linkage that Rust calls.
 * Built with exactly `pkg-config --cflags libdpdk` (build.rs). */
#ifndef FERRITE_DPDK_SHIM_H
#define FERRITE_DPDK_SHIM_H

#include <stdint.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

/* rte_errno is a per-lcore macro. */
int ferrite_dpdk_errno(void);

uint16_t ferrite_dpdk_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t ferrite_dpdk_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);

struct rte_mbuf *ferrite_dpdk_pktmbuf_alloc(struct rte_mempool *mp);
void ferrite_dpdk_pktmbuf_free(struct rte_mbuf *m);
/* Start of the first segment's data (rte_pktmbuf_mtod). */
void *ferrite_dpdk_pktmbuf_mtod(struct rte_mbuf *m);
/* Appends `len` bytes to the last segment; NULL without tailroom. */
void *ferrite_dpdk_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
uint16_t ferrite_dpdk_pktmbuf_tailroom(const struct rte_mbuf *m);
uint16_t ferrite_dpdk_pktmbuf_data_len(const struct rte_mbuf *m);
uint32_t ferrite_dpdk_pktmbuf_pkt_len(const struct rte_mbuf *m);
uint16_t ferrite_dpdk_pktmbuf_nb_segs(const struct rte_mbuf *m);
struct rte_mbuf *ferrite_dpdk_pktmbuf_next(const struct rte_mbuf *m);
/* 0, or -EOVERFLOW when the chain would exceed the segment limit. */
int ferrite_dpdk_pktmbuf_chain(struct rte_mbuf *head, struct rte_mbuf *tail);
uint16_t ferrite_dpdk_mbuf_refcnt_read(const struct rte_mbuf *m);
/* Adds `v` to the reference count of every segment; returns the first's. */
uint16_t ferrite_dpdk_mbuf_refcnt_update_chain(struct rte_mbuf *m, int16_t v);



/* RTE_ETH_TX_OFFLOAD_MULTI_SEGS (an RTE_BIT64 macro bindgen cannot evaluate). */
uint64_t ferrite_dpdk_tx_offload_multi_segs(void);
#endif

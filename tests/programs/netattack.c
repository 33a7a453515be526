/* netattack MODE ...: hand-made frames a pod with CAP_NET_RAW sends from its eth0, for the tests of
   the isolation between pods and from the host (tests/test_net_isolation.py).

     udp GATEWAY_MAC SOURCE DESTINATION PORT   one UDP datagram "sdrun-leak" from SOURCE ("own": eth0's
                                               address) to DESTINATION:PORT, sent to GATEWAY_MAC
     syn GATEWAY_MAC DESTINATION PORT          a TCP handshake from eth0's address: a SYN, and an ACK
                                               with data if a SYN-ACK comes back within 2 s; prints
                                               "syn-ack" or "no answer"
     arp GATEWAY_MAC GATEWAY_IP VICTIM_IP      ARP replies "VICTIM_IP is at eth0's MAC", every 100 ms
                                               for 2.5 s (an entry younger than locktime stays)
     ra                                        three IPv6 router advertisements to all nodes: prefix
                                               2001:db8:5d::/64 for SLAAC, this pod as default router
     udp6 GATEWAY_MAC SOURCE DESTINATION PORT  udp over IPv6 ("own": eth0's global address, "ll": its
                                               link-local one)
     na TARGET_IP6 [MAC]                       unsolicited neighbour advertisements to all nodes, from
                                               eth0's link-local address: "TARGET_IP6 ("own": eth0's
                                               address) is at MAC (eth0's)" (override), every 100 ms for 1 s

     redirect MAC IP6 TARGET DESTINATION       three ICMPv6 redirects to MAC, IP6, from eth0's link-local
                                               address: "for DESTINATION, TARGET is the better first hop"
     sniff TYPE SECONDS                        how many ICMPv6 messages of TYPE arrive on eth0 in SECONDS

   Frames go out through a packet socket, so that neither the pod's routing nor its own checks
   stand in the way: only what the host and the bridge do decides what arrives. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netpacket/packet.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PAYLOAD "sdrun-leak"

static int sock, ifindex;
static uint8_t own_mac[6];
static struct in_addr own_address;
static struct in6_addr own_address6, own_link_local;

static void fail(const char *what) {
    fprintf(stderr, "netattack: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void parse_mac(const char *text, uint8_t mac[6]) {
    if (sscanf(text, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &mac[0], &mac[1], &mac[2], &mac[3], &mac[4], &mac[5]) != 6) {
        fprintf(stderr, "netattack: bad MAC %s\n", text);
        exit(2);
    }
}

static struct in_addr parse_ipv4(const char *text) {
    struct in_addr address;
    if (strcmp(text, "own") == 0)
        return own_address;
    if (inet_pton(AF_INET, text, &address) != 1) {
        fprintf(stderr, "netattack: bad address %s\n", text);
        exit(2);
    }
    return address;
}

static void open_eth0(void) {
    struct ifreq request;
    struct sockaddr_ll bound = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL)};
    sock = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    if (sock < 0)
        fail("socket(AF_PACKET)");
    memset(&request, 0, sizeof request);
    strcpy(request.ifr_name, "eth0");
    if (ioctl(sock, SIOCGIFINDEX, &request) < 0)
        fail("SIOCGIFINDEX eth0");
    ifindex = request.ifr_ifindex;
    if (ioctl(sock, SIOCGIFHWADDR, &request) < 0)
        fail("SIOCGIFHWADDR eth0");
    memcpy(own_mac, request.ifr_hwaddr.sa_data, 6);
    if (ioctl(sock, SIOCGIFADDR, &request) < 0)
        fail("SIOCGIFADDR eth0");
    own_address = ((struct sockaddr_in *)&request.ifr_addr)->sin_addr;
    struct ifaddrs *addresses, *each;
    if (getifaddrs(&addresses) < 0)
        fail("getifaddrs");
    for (each = addresses; each; each = each->ifa_next) {
        if (!each->ifa_addr || each->ifa_addr->sa_family != AF_INET6 || strcmp(each->ifa_name, "eth0") != 0)
            continue;
        struct in6_addr found = ((struct sockaddr_in6 *)each->ifa_addr)->sin6_addr;
        if (IN6_IS_ADDR_LINKLOCAL(&found))
            own_link_local = found;
        else
            own_address6 = found;
    }
    freeifaddrs(addresses);
    bound.sll_ifindex = ifindex;
    if (bind(sock, (struct sockaddr *)&bound, sizeof bound) < 0)
        fail("bind eth0");
}

static void send_frame(const uint8_t *frame, size_t length) {
    if (send(sock, frame, length, 0) != (ssize_t)length)
        fail("send");
}

static uint32_t sum16(const void *data, size_t length, uint32_t sum) {
    const uint8_t *bytes = data;
    for (size_t i = 0; i + 1 < length; i += 2)
        sum += (uint32_t)(bytes[i] << 8 | bytes[i + 1]);
    if (length & 1)
        sum += (uint32_t)(bytes[length - 1] << 8);
    return sum;
}

static uint16_t fold(uint32_t sum) {
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return htons((uint16_t)~sum);
}

static size_t ethernet(uint8_t *frame, const uint8_t destination[6], uint16_t type) {
    memcpy(frame, destination, 6);
    memcpy(frame + 6, own_mac, 6);
    frame[12] = (uint8_t)(type >> 8);
    frame[13] = (uint8_t)type;
    return 14;
}

/* An IPv4 header at ip for a payload of length bytes; its checksum, and the transport checksum
   (at offset check_at in the payload, unless negative) over the pseudo-header. */
static size_t ipv4(uint8_t *ip, struct in_addr source, struct in_addr destination, uint8_t protocol, size_t length,
                   int check_at) {
    uint8_t pseudo[12];
    memset(ip, 0, 20);
    ip[0] = 0x45;
    ip[2] = (uint8_t)((20 + length) >> 8);
    ip[3] = (uint8_t)(20 + length);
    ip[6] = 0x40; /* don't fragment */
    ip[8] = 64;
    ip[9] = protocol;
    memcpy(ip + 12, &source, 4);
    memcpy(ip + 16, &destination, 4);
    uint16_t check = fold(sum16(ip, 20, 0));
    memcpy(ip + 10, &check, 2);
    if (check_at >= 0) {
        memcpy(pseudo, &source, 4);
        memcpy(pseudo + 4, &destination, 4);
        pseudo[8] = 0;
        pseudo[9] = protocol;
        pseudo[10] = (uint8_t)(length >> 8);
        pseudo[11] = (uint8_t)length;
        check = fold(sum16(ip + 20, length, sum16(pseudo, 12, 0)));
        memcpy(ip + 20 + check_at, &check, 2);
    }
    return 20 + length;
}

static int udp(char **argv) {
    uint8_t gateway[6], frame[128] = {0};
    parse_mac(argv[0], gateway);
    struct in_addr source = parse_ipv4(argv[1]), destination = parse_ipv4(argv[2]);
    uint16_t port = (uint16_t)atoi(argv[3]);
    size_t at = ethernet(frame, gateway, ETHERTYPE_IP);
    uint8_t *segment = frame + at + 20;
    size_t length = 8 + strlen(PAYLOAD);
    segment[0] = 40000 >> 8, segment[1] = 40000 & 0xff;
    segment[2] = (uint8_t)(port >> 8), segment[3] = (uint8_t)port;
    segment[4] = (uint8_t)(length >> 8), segment[5] = (uint8_t)length;
    memcpy(segment + 8, PAYLOAD, strlen(PAYLOAD));
    at += ipv4(frame + at, source, destination, IPPROTO_UDP, length, 6);
    send_frame(frame, at);
    return 0;
}

static size_t tcp_frame(uint8_t *frame, const uint8_t gateway[6], struct in_addr destination, uint16_t port,
                        uint32_t sequence, uint32_t acknowledgement, uint8_t flags, const char *data) {
    size_t at = ethernet(frame, gateway, ETHERTYPE_IP), length = 20 + strlen(data);
    uint8_t *segment = frame + at + 20;
    memset(segment, 0, length);
    segment[0] = 40001 >> 8, segment[1] = 40001 & 0xff;
    segment[2] = (uint8_t)(port >> 8), segment[3] = (uint8_t)port;
    uint32_t word = htonl(sequence);
    memcpy(segment + 4, &word, 4);
    word = htonl(acknowledgement);
    memcpy(segment + 8, &word, 4);
    segment[12] = 5 << 4;
    segment[13] = flags;
    segment[14] = 0xff, segment[15] = 0xff; /* window */
    memcpy(segment + 20, data, strlen(data));
    return at + ipv4(frame + at, own_address, destination, IPPROTO_TCP, length, 16);
}

/* The sequence number of a SYN-ACK from destination:port to our port 40001, or 0 if none came. */
static uint32_t await_syn_ack(struct in_addr destination, uint16_t port) {
    uint8_t frame[2048];
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        long left = 2000 - ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000);
        struct pollfd ready = {.fd = sock, .events = POLLIN};
        if (left <= 0 || poll(&ready, 1, (int)left) <= 0)
            return 0;
        ssize_t got = recv(sock, frame, sizeof frame, 0);
        if (got < 14 + 40 || frame[12] != 0x08 || frame[13] != 0x00 || frame[14 + 9] != IPPROTO_TCP)
            continue;
        const uint8_t *segment = frame + 14 + (frame[14] & 0x0f) * 4;
        if (memcmp(frame + 14 + 12, &destination, 4) != 0 || (segment[0] << 8 | segment[1]) != port ||
            (segment[2] << 8 | segment[3]) != 40001 || (segment[13] & 0x12) != 0x12)
            continue;
        uint32_t sequence;
        memcpy(&sequence, segment + 4, 4);
        return ntohl(sequence);
    }
}

static int syn(char **argv) {
    uint8_t gateway[6], frame[128];
    parse_mac(argv[0], gateway);
    struct in_addr destination = parse_ipv4(argv[1]);
    uint16_t port = (uint16_t)atoi(argv[2]);
    uint32_t ours = 0x5d000000;
    send_frame(frame, tcp_frame(frame, gateway, destination, port, ours, 0, 0x02, ""));
    uint32_t theirs = await_syn_ack(destination, port);
    if (!theirs) {
        puts("no answer");
        return 0;
    }
    send_frame(frame, tcp_frame(frame, gateway, destination, port, ours + 1, theirs + 1, 0x10, ""));
    send_frame(frame, tcp_frame(frame, gateway, destination, port, ours + 1, theirs + 1, 0x18, PAYLOAD));
    puts("syn-ack");
    return 0;
}

static int arp(char **argv) {
    uint8_t gateway[6], frame[64] = {0};
    parse_mac(argv[0], gateway);
    struct in_addr gateway_ip = parse_ipv4(argv[1]), victim = parse_ipv4(argv[2]);
    size_t at = ethernet(frame, gateway, ETHERTYPE_ARP);
    static const uint8_t header[] = {0, 1, 8, 0, 6, 4, 0, 2}; /* ethernet, IPv4, 6, 4, reply */
    memcpy(frame + at, header, 8);
    memcpy(frame + at + 8, own_mac, 6);
    memcpy(frame + at + 14, &victim, 4);
    memcpy(frame + at + 18, gateway, 6);
    memcpy(frame + at + 24, &gateway_ip, 4);
    for (int i = 0; i < 25; i++) {
        send_frame(frame, 60);
        usleep(100000);
    }
    return 0;
}

static int ra(void) {
    static const uint8_t all_nodes_mac[6] = {0x33, 0x33, 0, 0, 0, 1};
    uint8_t frame[160] = {0}, pseudo[40] = {0};
    size_t at = ethernet(frame, all_nodes_mac, ETHERTYPE_IPV6);
    uint8_t *ip = frame + at, *icmp = ip + 40;
    size_t length = 16 + 32 + 8; /* the advertisement, a prefix and a link-layer address option */
    ip[0] = 0x60;
    ip[4] = 0, ip[5] = (uint8_t)length;
    ip[6] = IPPROTO_ICMPV6;
    ip[7] = 255;
    ip[8] = 0xfe, ip[9] = 0x80; /* fe80::<own MAC, EUI-64> */
    ip[16] = own_mac[0] ^ 2, ip[17] = own_mac[1], ip[18] = own_mac[2], ip[19] = 0xff;
    ip[20] = 0xfe, ip[21] = own_mac[3], ip[22] = own_mac[4], ip[23] = own_mac[5];
    ip[24] = 0xff, ip[25] = 0x02, ip[39] = 1; /* ff02::1 */
    icmp[0] = 134;   /* router advertisement */
    icmp[4] = 64;    /* hop limit */
    icmp[6] = 0x07, icmp[7] = 0x08; /* router lifetime 1800 s */
    uint8_t *prefix = icmp + 16;
    prefix[0] = 3, prefix[1] = 4, prefix[2] = 64, prefix[3] = 0xc0; /* on-link, autonomous */
    prefix[4] = 0, prefix[5] = 1, prefix[6] = 0x51, prefix[7] = 0x80; /* valid 86400 s */
    prefix[8] = 0, prefix[9] = 0, prefix[10] = 0x38, prefix[11] = 0x40; /* preferred 14400 s */
    prefix[16] = 0x20, prefix[17] = 0x01, prefix[18] = 0x0d, prefix[19] = 0xb8, prefix[20] = 0, prefix[21] = 0x5d;
    uint8_t *source = prefix + 32;
    source[0] = 1, source[1] = 1;
    memcpy(source + 2, own_mac, 6);
    memcpy(pseudo, ip + 8, 32);
    pseudo[35] = (uint8_t)length;
    pseudo[39] = IPPROTO_ICMPV6;
    uint16_t check = fold(sum16(icmp, length, sum16(pseudo, 40, 0)));
    memcpy(icmp + 2, &check, 2);
    for (int i = 0; i < 3; i++) {
        send_frame(frame, at + 40 + length);
        usleep(200000);
    }
    return 0;
}

static struct in6_addr parse_ipv6(const char *text) {
    struct in6_addr address;
    if (strcmp(text, "own") == 0)
        return own_address6;
    if (strcmp(text, "ll") == 0)
        return own_link_local;
    if (inet_pton(AF_INET6, text, &address) != 1) {
        fprintf(stderr, "netattack: bad address %s\n", text);
        exit(2);
    }
    return address;
}

/* An IPv6 header at ip for a payload of length bytes of protocol next, and the payload's
   checksum (at offset check_at) over the pseudo-header. */
static size_t ipv6(uint8_t *ip, const struct in6_addr *source, const struct in6_addr *destination, uint8_t next,
                   uint8_t hop_limit, size_t length, size_t check_at) {
    uint8_t pseudo[40] = {0};
    memset(ip, 0, 40);
    ip[0] = 0x60;
    ip[4] = (uint8_t)(length >> 8), ip[5] = (uint8_t)length;
    ip[6] = next;
    ip[7] = hop_limit;
    memcpy(ip + 8, source, 16);
    memcpy(ip + 24, destination, 16);
    memcpy(pseudo, ip + 8, 32);
    pseudo[34] = (uint8_t)(length >> 8), pseudo[35] = (uint8_t)length;
    pseudo[39] = next;
    uint16_t check = fold(sum16(ip + 40, length, sum16(pseudo, 40, 0)));
    memcpy(ip + 40 + check_at, &check, 2);
    return 40 + length;
}

static int udp6(char **argv) {
    uint8_t gateway[6], frame[160] = {0};
    parse_mac(argv[0], gateway);
    struct in6_addr source = parse_ipv6(argv[1]), destination = parse_ipv6(argv[2]);
    uint16_t port = (uint16_t)atoi(argv[3]);
    size_t at = ethernet(frame, gateway, ETHERTYPE_IPV6);
    uint8_t *segment = frame + at + 40;
    size_t length = 8 + strlen(PAYLOAD);
    segment[0] = 40000 >> 8, segment[1] = 40000 & 0xff;
    segment[2] = (uint8_t)(port >> 8), segment[3] = (uint8_t)port;
    segment[4] = (uint8_t)(length >> 8), segment[5] = (uint8_t)length;
    memcpy(segment + 8, PAYLOAD, strlen(PAYLOAD));
    at += ipv6(frame + at, &source, &destination, IPPROTO_UDP, 64, length, 6);
    send_frame(frame, at);
    return 0;
}

static int na(char **argv) {
    static const uint8_t all_nodes_mac[6] = {0x33, 0x33, 0, 0, 0, 1};
    struct in6_addr victim = parse_ipv6(argv[0]), all_nodes;
    inet_pton(AF_INET6, "ff02::1", &all_nodes);
    uint8_t frame[128] = {0};
    size_t at = ethernet(frame, all_nodes_mac, ETHERTYPE_IPV6);
    uint8_t *icmp = frame + at + 40;
    size_t length = 24 + 8; /* the advertisement and a target link-layer address option */
    icmp[0] = 136;  /* neighbour advertisement */
    icmp[4] = 0x20; /* override */
    memcpy(icmp + 8, &victim, 16);
    icmp[24] = 2, icmp[25] = 1;
    memcpy(icmp + 26, own_mac, 6);
    if (argv[1])
        parse_mac(argv[1], icmp + 26);
    at += ipv6(frame + at, &own_link_local, &all_nodes, IPPROTO_ICMPV6, 255, length, 2);
    for (int i = 0; i < 10; i++) {
        send_frame(frame, at);
        usleep(100000);
    }
    return 0;
}

static int redirect(char **argv) {
    uint8_t victim_mac[6], frame[128] = {0};
    parse_mac(argv[0], victim_mac);
    struct in6_addr victim = parse_ipv6(argv[1]), target = parse_ipv6(argv[2]), destination = parse_ipv6(argv[3]);
    size_t at = ethernet(frame, victim_mac, ETHERTYPE_IPV6);
    uint8_t *icmp = frame + at + 40;
    size_t length = 8 + 16 + 16;
    icmp[0] = 137; /* redirect */
    memcpy(icmp + 8, &target, 16);
    memcpy(icmp + 24, &destination, 16);
    at += ipv6(frame + at, &own_link_local, &victim, IPPROTO_ICMPV6, 255, length, 2);
    for (int i = 0; i < 3; i++) {
        send_frame(frame, at);
        usleep(200000);
    }
    return 0;
}

static int sniff(char **argv) {
    int type = atoi(argv[0]), count = 0;
    uint8_t frame[2048];
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        long left = atol(argv[1]) * 1000 - ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000);
        struct pollfd ready = {.fd = sock, .events = POLLIN};
        if (left <= 0 || poll(&ready, 1, (int)left) <= 0)
            break;
        ssize_t got = recv(sock, frame, sizeof frame, 0);
        if (got >= 14 + 40 + 4 && frame[12] == 0x86 && frame[13] == 0xdd && frame[14 + 6] == IPPROTO_ICMPV6 &&
            frame[14 + 40] == type)
            count++;
    }
    printf("%d\n", count);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fputs("usage: netattack udp|syn|arp|ra|udp6|na|redirect|sniff ...\n", stderr);
        return 2;
    }
    open_eth0();
    if (strcmp(argv[1], "udp") == 0 && argc == 6)
        return udp(argv + 2);
    if (strcmp(argv[1], "syn") == 0 && argc == 5)
        return syn(argv + 2);
    if (strcmp(argv[1], "arp") == 0 && argc == 5)
        return arp(argv + 2);
    if (strcmp(argv[1], "ra") == 0 && argc == 2)
        return ra();
    if (strcmp(argv[1], "udp6") == 0 && argc == 6)
        return udp6(argv + 2);
    if (strcmp(argv[1], "redirect") == 0 && argc == 6)
        return redirect(argv + 2);
    if (strcmp(argv[1], "sniff") == 0 && argc == 4)
        return sniff(argv + 2);
    if (strcmp(argv[1], "na") == 0 && (argc == 3 || argc == 4))
        return na(argv + 2);
    fputs("netattack: bad arguments\n", stderr);
    return 2;
}
